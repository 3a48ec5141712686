"""Checkpoints: a restored state is checked leaf by leaf against its record; the storage
failing moves nothing."""

import errno
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ldct_jax.train import state as train_state
from ldct_jax.train.checkpoint import CheckpointReadError, Checkpointer


def _state(step, scale=1.0):
    """A small train state: the run's raw uint32 key sums to ~4e9, its params to ~4."""
    params = {"conv": {"kernel": jnp.full((3, 3, 1, 4), 0.1 * scale), "bias": jnp.zeros(4)}}
    s = train_state.create(params, optax.adam(1e-3), seed=0)
    return s.replace(step=jnp.asarray(step, jnp.int32))


def _total(state):
    """The record of earlier versions, by its formula: one sum of |x| over every leaf."""
    return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(state)))


def _saved(directory, *steps):
    ckpt = Checkpointer(directory, keep=5)
    for step in steps:
        ckpt.save(_state(step))
    return ckpt


def _swap_state(ckpt, step, other):
    """Puts `other`'s array data under checkpoint `step`, which keeps its own record: data that
    decodes but is not what was saved."""
    tmp = ckpt.directory + "_other"
    Checkpointer(tmp).save(other)
    shutil.rmtree(os.path.join(ckpt.directory, str(step), "state"))
    shutil.copytree(os.path.join(tmp, str(step), "state"),
                    os.path.join(ckpt.directory, str(step), "state"))


@pytest.mark.parametrize("scale", [0.0, 10.0])
def test_params_that_differ_from_the_record_are_caught(tmp_path, scale):
    ckpt = _saved(str(tmp_path / "ck"), 2, 4)
    _swap_state(ckpt, 4, _state(4, scale))
    # One sum over the state (the record before) hid this: the key outweighs the params 1e9:1.
    assert np.isclose(_total(_state(4, scale)), _total(_state(4)), rtol=1e-5)

    restored, step = Checkpointer(ckpt.directory).restore_latest(_state(0))
    assert step == 2
    np.testing.assert_array_equal(restored.params["conv"]["kernel"],
                                  _state(2).params["conv"]["kernel"])
    assert os.listdir(ckpt.directory + "_corrupt")[0].startswith("4-")
    assert not os.path.exists(os.path.join(ckpt.directory, "4"))


def test_checkpoints_with_a_record_of_the_earlier_format_restore(tmp_path):
    ckpt = _saved(str(tmp_path / "ck"), 2)
    meta_path = os.path.join(ckpt.directory, "2", "meta", "metadata")
    with open(meta_path) as f:
        meta = json.load(f)
    # New records keep the earlier versions' sum too, for an older reader of this workdir.
    assert np.isclose(meta["fingerprint"], _total(_state(2)), rtol=1e-6)
    with open(meta_path, "w") as f:
        json.dump({"step": 2, "fingerprint": _total(_state(2)),
                   "time": meta["time"]}, f)
    restored, step = Checkpointer(ckpt.directory).restore_latest(_state(0))
    assert step == 2 and int(restored.step) == 2


def test_storage_errors_move_nothing_and_say_so(tmp_path, monkeypatch):
    ckpt = _saved(str(tmp_path / "ck"), 2, 4)
    before = sorted(os.listdir(ckpt.directory))

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    reader = Checkpointer(ckpt.directory)
    monkeypatch.setattr(reader._manager, "restore", eio)
    with pytest.raises(CheckpointReadError, match=r"ck/4: reading the checkpoint failed \(OSError"
                       r": \[Errno 5\] Input/output error\); nothing was moved"):
        reader.restore_latest(_state(0))
    assert sorted(os.listdir(ckpt.directory)) == before
    assert not os.path.exists(ckpt.directory + "_corrupt")


def test_no_checkpoint_restoring_moves_nothing_and_fails(tmp_path):
    ckpt = _saved(str(tmp_path / "ck"), 2, 4)
    for step in (2, 4):
        _swap_state(ckpt, step, _state(step, 0.0))
    with pytest.raises(CheckpointReadError, match=r"ck: no checkpoint restored; nothing was moved"
                       r"\. step 4: ValueError: the restored state does not match the saved "
                       r"record \(params/conv/kernel: sum 0, the record says 3\.59.*; step 2: .*"
                       r"To start over, move .*ck away"):
        Checkpointer(ckpt.directory).restore_latest(_state(0))
    assert ckpt.all_steps() == [2, 4] and not os.path.exists(ckpt.directory + "_corrupt")
