"""A fixed-seed slice of ``python -m tests.runtime.hostile``: 63 cases (nine of each kind),
each in a subprocess with TensorFlow blocked; none may crash, hang, leave a partial file,
change the state, be accepted where it must be refused, or fail with an unclear error."""
from __future__ import annotations

import collections
import logging

import pytest

from tests.runtime import hostile

CASES = 63
SEED = 15
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def results(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files = hostile.prepare(model_files, folder)
    return hostile.run_all(hostile.generate(CASES, SEED, files, folder / "cases"))


def test_every_hostile_case_ends_cleanly(results):
    logger.warning("hostile slice:\n%s", hostile.summary(results))
    bad = [r for r in results if r["outcome"] in hostile.BAD]
    assert not bad, hostile.summary(results)
    kinds = collections.Counter(r["kind"] for r in results)
    assert kinds == {k: CASES // len(hostile.KINDS) for k in hostile.KINDS}


def test_clean_errors_name_the_file_or_input(results):
    for r in results:
        if r["outcome"] == "clean error":
            assert all(w in r["detail"]["message"] for w in r["words"]), r


@pytest.mark.parametrize("what", ["x ragged list", "x NaN (train)", "x a string"])
def test_inputs_found_by_the_command(model_files, tmp_path, what):
    """Cases the command found or decided, as regular tests (ragged lists raised numpy's
    ValueError before check_batch wrapped it; NaN in x passes to the model's guard)."""
    files = {"mlp": model_files["mlp"]}
    name, action, x, y, lr, expect = next(c for c in hostile._INPUTS if c[0] == what)
    case = {"id": 0, "kind": "bad_inputs", "what": name, "folder": str(tmp_path),
            "action": action, "model": files["mlp"], "expect": expect, "learning_rate": lr,
            "x": x or {"dtype": "float32", "shape": [4, 20]},
            "y": y or {"dtype": "int32", "shape": [4], "fill": "1"}, "words": ["x"]}
    result = hostile.run(case)
    wanted = "clean error" if expect == "refuse" else "accepted correctly"
    assert result["outcome"] == wanted, result


def _damaged(model_path, out_path, edit):
    """``model_path`` with ``edit(model, train_subgraph)`` applied through the object API."""
    from ai_edge_litert import schema_py_generated as schema

    from tfpock.tflite import flatbuffer, model_file

    content = open(model_path, "rb").read()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    train = model.subgraphs[model_file.read(content).signatures["train"]]
    edit(model, train)
    out_path.write_bytes(flatbuffer.pack(model))
    return out_path


def _bad_index(model, train):
    op = train.operators[len(train.operators) // 2]
    op.inputs = [32805] + [int(i) for i in op.inputs[1:]]


def _bad_opcode(model, train):
    from ai_edge_litert import schema_py_generated as schema

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.SKIP_GRAM
    model.operatorCodes.append(code)
    train.operators[len(train.operators) // 2].opcodeIndex = len(model.operatorCodes) - 1


@pytest.mark.parametrize("edit, words", [(_bad_index, "Invalid tensor index 32805"),
                                         (_bad_opcode, "SKIP_GRAM")])
def test_damaged_operator_is_refused_at_load(model_files, tmp_path, edit, words):
    """Found by the command (1-bit flips of an operator's tensor index or op code): the
    interpreter loads such a file, and only preparing the ``train`` subgraph fails, which
    escaped ``Trainer.train`` as a RuntimeError. The Trainer prepares every signature when it
    loads the file now, so the damage is a ModelFileError naming file and signature there."""
    from tfpock.runtime import ModelFileError, Trainer

    path = _damaged(model_files["mlp"], tmp_path / "damaged.tflite", edit)
    with pytest.raises(ModelFileError) as info:
        Trainer(path)
    message = str(info.value)
    assert str(path) in message and "signature 'train'" in message and words in message
