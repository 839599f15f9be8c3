"""Checkpoints: ours round-trip atomically; the authors' layout loads with identical outputs;
bad files fail in one line."""
import io
import os
import pickle
from collections import OrderedDict

import pytest
import torch

import skipnet
from skipnet.core.checkpoint import atomic_save, checkpoint_gate_kind, read_checkpoint
from skipnet.core.models import GateKind
from skipnet.errors import CheckpointError


def authors_keys(layers, gate, classes_fc=True, imagenet=False):
    """Parameter and buffer names of the authors' gated ResNets, written from their models.py layout
    (not from our model): blocks, a downsample shared by group{g}_ds{i} and the block, a gate per block
    (the last one unused), the recurrent control, conv1/bn1/fc."""
    bn = ["weight", "bias", "running_mean", "running_var"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    inplanes = 64 if imagenet else 16
    widths = (64, 128, 256, 512) if imagenet else (16, 32, 64)
    expansion = 4 if imagenet else 1
    for g, n in enumerate(layers, start=1):
        for i in range(n):
            stride = 2 if (g > 1 and i == 0) else 1
            out = widths[g - 1] * expansion
            convs = ["conv1", "conv2", "conv3"] if imagenet else ["conv1", "conv2"]
            for c in convs:
                keys.append(f"group{g}_layer{i}.{c}.weight")
                keys += [f"group{g}_layer{i}.bn{c[-1]}.{b}" for b in bn]
            if stride != 1 or inplanes != out:
                for prefix in (f"group{g}_ds{i}", f"group{g}_layer{i}.downsample"):
                    keys.append(f"{prefix}.0.weight")
                    keys += [f"{prefix}.1.{b}" for b in bn]
            inplanes = out
            if gate == "rnn":
                keys += [f"group{g}_gate{i}.1.weight", f"group{g}_gate{i}.1.bias"]
            else:
                convs = ["conv1", "conv2"] if gate == "ffgate1" else ["conv1"]
                for c in convs:
                    keys.append(f"group{g}_gate{i}.{c}.weight")
                    keys += [f"group{g}_gate{i}.bn{c[-1]}.{b}" for b in bn]
                keys += [f"group{g}_gate{i}.linear_layer.weight", f"group{g}_gate{i}.linear_layer.bias"]
    if gate == "rnn":
        keys += [f"control.rnn.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        keys += ["control.proj.weight", "control.proj.bias"]
    keys += ["fc.weight", "fc.bias"]
    return keys


def authors_file(model, path, keys, imagenet=False):
    """Write `model`'s weights under the authors' names, as DataParallel saved them in PyTorch 0.3."""
    ours = model.state_dict()
    state = OrderedDict()
    for key in keys:
        source = key
        if ".downsample." in key:                       # shared module: same tensor as group{g}_ds{i}
            g, rest = key.split("_layer")
            i, tail = rest.split(".downsample.")
            source = f"{g}_ds{i}.{tail}"
        if source in ours:
            value = ours[source].clone()
            if imagenet and key == "control.proj.weight":
                value = value.view(1, -1, 1, 1)        # their 1x1 conv
        else:                                           # their unused gate after the last block
            like = ours[source.replace(source.split(".")[0], "group1_gate0", 1)]
            value = torch.randn_like(like.float()).to(like.dtype)
        state["module." + key] = value
    torch.save({"iter": 63999, "arch": model.arch, "state_dict": state, "best_prec1": 93.3}, path)


def randomize(model):
    torch.manual_seed(7)
    for name, buf in model.named_buffers():
        if "running_var" in name:
            buf.uniform_(0.5, 2.0)
        elif "running_mean" in name:
            buf.normal_(0, 0.1)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name,layers,gate,imagenet", [
    ("cifar10_rnn_gate_rl_38", (6, 6, 6), "rnn", False),
    ("cifar10_rnn_gate_110", (18, 18, 18), "rnn", False),
    ("cifar10_feedforward_38", (6, 6, 6), "ffgate1", False),
    ("cifar100_feedforward_rl_110", (18, 18, 18), "ffgate2", False),
    ("imagenet_rnn_gate_rl_50", (3, 4, 6, 3), "rnn", True),
])
@pytest.mark.parametrize("gate_norm", [False, True])
def test_authors_layout_reproduces_outputs(tmp_path, name, layers, gate, imagenet, gate_norm):
    """Their file into their architecture, and into ours, whose recurrent embedding norm it
    lacks (then loaded as an exact identity): the same outputs bit for bit."""
    source = randomize(skipnet.create_model(name, gate_norm=False))       # the authors' gates
    path = tmp_path / "resnet-rnn-cifar10.pth.tar"
    authors_file(source, path, authors_keys(layers, gate, imagenet=imagenet), imagenet=imagenet)
    target = skipnet.create_model(name, gate_norm=gate_norm)
    info = skipnet.load_checkpoint(target, path)
    assert info.source == "authors" and info.metrics["best_prec1"] == 93.3
    x = torch.randn(2, 3, 64 if imagenet else 32, 64 if imagenet else 32)
    with torch.no_grad():
        expected, rec_a = source(x)
        got, rec_b = target.eval()(x)
    assert torch.equal(expected, got) and torch.equal(rec_a.decision, rec_b.decision)


def test_authors_plain_resnet_layout(tmp_path):
    source = randomize(skipnet.create_model("cifar10_resnet_38"))
    state = OrderedDict()
    for key, value in source.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if "_ds" in key:
            g, rest = key.split("_ds")
            i, tail = rest.split(".", 1)
            key = f"layer{g[5:]}.{i}.downsample.{tail}"
        elif "_layer" in key:
            g, rest = key.split("_layer")
            i, tail = rest.split(".", 1)
            key = f"layer{g[5:]}.{i}.{tail}"
        state["module." + key] = value
    torch.save({"state_dict": state}, tmp_path / "plain.pth.tar")
    target = skipnet.create_model("cifar10_resnet_38")
    skipnet.load_checkpoint(target, tmp_path / "plain.pth.tar")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x)[0], target.eval()(x)[0])


def test_our_checkpoint_round_trip_carries_metadata(tmp_path):
    model = randomize(skipnet.create_model("cifar10_rnn_gate_rl_38"))
    skipnet.save_checkpoint(model, tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]        # no temporary left behind
    other = skipnet.create_model("cifar10_rnn_gate_rl_38")
    info = skipnet.load_checkpoint(other, tmp_path / "m.pt")
    assert info.arch == "cifar10_rnn_gate_rl_38" and info.gate == "recurrent" and info.mode == "policy"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x)[0], other.eval()(x)[0])


def one_line(err):
    return "\n" not in str(err.value)


def test_other_architecture_is_refused(tmp_path):
    skipnet.save_checkpoint(skipnet.create_model("cifar10_rnn_gate_38"), tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"architecture 'cifar10_rnn_gate_38'\) does not match "
                       r"cifar10_rnn_gate_74: \d+ missing keys") as err:
        skipnet.load_checkpoint(skipnet.create_model("cifar10_rnn_gate_74"), tmp_path / "a.pt")
    assert one_line(err)


def test_authors_file_of_another_depth_names_missing_keys(tmp_path):
    source = skipnet.create_model("cifar10_rnn_gate_38")
    authors_file(source, tmp_path / "a.pth.tar", authors_keys((6, 6, 6), "rnn"))
    with pytest.raises(CheckpointError, match="missing keys") as err:
        skipnet.load_checkpoint(skipnet.create_model("cifar10_rnn_gate_74"), tmp_path / "a.pth.tar")
    assert one_line(err)


def test_shape_mismatch_is_named(tmp_path):
    source = skipnet.create_model("cifar100_rnn_gate_38")
    authors_file(source, tmp_path / "a.pth.tar", authors_keys((6, 6, 6), "rnn"))
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e.g. fc.weight \(100, 64\) vs \(10, 64\)") as err:
        skipnet.load_checkpoint(skipnet.create_model("cifar10_rnn_gate_38"), tmp_path / "a.pth.tar")
    assert one_line(err)


def test_not_a_checkpoint_and_truncated_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, I am not a checkpoint\n")
    model = skipnet.create_model("cifar10_rnn_gate_38")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|unreadable") as err:
        skipnet.load_checkpoint(model, tmp_path / "notes.txt")
    assert one_line(err)
    skipnet.save_checkpoint(model, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as err:
        skipnet.load_checkpoint(model, tmp_path / "cut.pt")
    assert one_line(err)
    with pytest.raises(CheckpointError, match="no such file"):
        skipnet.load_checkpoint(model, tmp_path / "absent.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' or 'state_dict'"):
        skipnet.load_checkpoint(model, tmp_path / "other.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: it is not weights-only") as err:
        read_checkpoint(path)
    assert one_line(err)


def test_interrupted_write_keeps_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"v": torch.tensor([1.0])}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk pulled out")

    with pytest.raises(RuntimeError, match="disk pulled out"):
        atomic_save({"v": torch.tensor([2.0]), "b": Boom()}, path)
    assert read_checkpoint(path)["v"].item() == 1.0
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_sp_checkpoint_loads_into_the_hrl_variant(tmp_path):
    sp = randomize(skipnet.create_model("cifar10_rnn_gate_38"))
    skipnet.save_checkpoint(sp, tmp_path / "sp.pt")
    hrl = skipnet.create_model("cifar10_rnn_gate_rl_38")
    assert skipnet.load_checkpoint(hrl, tmp_path / "sp.pt").arch == "cifar10_rnn_gate_38"
    assert torch.equal(hrl.fc.weight, sp.fc.weight)


# -- gate types: checkpoint_gate_kind and the mismatch message ----------------------------------

def authors_state(layers, gate, imagenet=False):
    """An authors'-layout checkpoint dict (their key names only; the values do not matter)."""
    return {"state_dict": {"module." + k: torch.zeros(1) for k in authors_keys(layers, gate, imagenet=imagenet)}}


@pytest.mark.parametrize("gate,kind", [("rnn", "recurrent"), ("ffgate1", "feedforward_conv"),
                                       ("ffgate2", "feedforward_fc")])
def test_gate_kind_from_the_authors_layout(gate, kind):
    assert checkpoint_gate_kind(authors_state((6, 6, 6), gate)) == GateKind(kind)
    bare = {k[len("module."):]: v for k, v in authors_state((6, 6, 6), gate)["state_dict"].items()}
    assert checkpoint_gate_kind(bare) == GateKind(kind)            # a bare state_dict, no prefix


def test_gate_kind_from_the_authors_imagenet_and_plain_layouts():
    assert checkpoint_gate_kind(authors_state((3, 4, 6, 3), "rnn", imagenet=True)) is GateKind.RECURRENT
    plain = {"module.conv1.weight": torch.zeros(1), "module.layer1.0.conv1.weight": torch.zeros(1),
             "module.layer2.0.downsample.0.weight": torch.zeros(1), "module.fc.weight": torch.zeros(1)}
    assert checkpoint_gate_kind({"state_dict": plain}) is None


@pytest.mark.parametrize("gate", ["recurrent", "feedforward_conv", "feedforward_fc", None])
def test_gate_kind_of_our_checkpoints_recorded_and_from_keys(tmp_path, gate):
    model = skipnet.create_model("cifar10_resnet_38" if gate is None else f"cifar10_skipnet_38_{gate}")
    expected = None if gate is None else GateKind(gate)
    skipnet.save_checkpoint(model, tmp_path / "m.pt")
    assert checkpoint_gate_kind(tmp_path / "m.pt") == expected               # recorded in info
    assert checkpoint_gate_kind(str(tmp_path / "m.pt")) == expected
    ckpt = read_checkpoint(tmp_path / "m.pt")
    del ckpt["info"]["gate"]
    assert checkpoint_gate_kind(ckpt) == expected                            # read off the keys
    assert checkpoint_gate_kind(model.state_dict()) == expected


def test_recurrent_checkpoint_into_feedforward_model_names_both_gate_types(tmp_path):
    skipnet.save_checkpoint(skipnet.create_model("cifar10_rnn_gate_38"), tmp_path / "sp.pt")
    model = skipnet.create_model("cifar10_rnn_gate_38", gate="feedforward_conv")   # model.gate override
    with pytest.raises(CheckpointError, match=r"sp.pt \(architecture 'cifar10_rnn_gate_38'\) does not match "
                       r"cifar10_skipnet_38_feedforward_conv: the checkpoint holds recurrent gates, the model has "
                       r"feedforward_conv gates: set model.gate to recurrent or use an SP checkpoint of "
                       r"feedforward_conv gates$") as err:
        skipnet.load_checkpoint(model, tmp_path / "sp.pt")
    assert one_line(err) and "missing keys" not in str(err.value)


def test_authors_recurrent_file_into_feedforward_model_names_both_gate_types(tmp_path):
    authors_file(skipnet.create_model("cifar10_rnn_gate_38"), tmp_path / "a.pth.tar", authors_keys((6, 6, 6), "rnn"))
    with pytest.raises(CheckpointError, match=r"the authors' architecture 'cifar10_rnn_gate_38'\) does not match "
                       r"cifar10_feedforward_38: the checkpoint holds recurrent gates, the model has "
                       r"feedforward_conv gates") as err:
        skipnet.load_checkpoint(skipnet.create_model("cifar10_feedforward_38"), tmp_path / "a.pth.tar")
    assert one_line(err)


def test_plain_and_gated_mismatches_name_the_missing_gates(tmp_path):
    skipnet.save_checkpoint(skipnet.create_model("cifar10_resnet_38"), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="holds no gates .a plain ResNet., the model has recurrent gates"):
        skipnet.load_checkpoint(skipnet.create_model("cifar10_rnn_gate_rl_38"), tmp_path / "plain.pt")
    skipnet.save_checkpoint(skipnet.create_model("cifar10_skipnet_38_feedforward_fc"), tmp_path / "ff.pt")
    with pytest.raises(CheckpointError, match="holds feedforward_fc gates, the model has no gates .a plain ResNet."):
        skipnet.load_checkpoint(skipnet.create_model("cifar10_resnet_38"), tmp_path / "ff.pt")
