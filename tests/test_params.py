import copy
import re

import pytest
import yaml

from realmix import params
from realmix.algorithms import ALGORITHMS
from realmix.errors import RealmixError
from tests.conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def parse_with(**changes):
    data = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return params.parse(data, require_all=True)


def test_default_params_file_is_valid():
    p = params.load(ROOT / "params.yaml")
    assert p.dataset.source == "digits" and p.mismatch.unlabelled_classes[100] == [6, 7, 8, 9]
    assert p.mismatch.size in p.split.sizes


def test_unknown_key_names_it_and_suggests():
    data = copy.deepcopy(DEFAULT)
    data["split"]["nvlaid"] = 3
    with pytest.raises(RealmixError, match=r"split\.'nvlaid'.*did you mean 'nvalid'"):
        params.parse(data)
    data = copy.deepcopy(DEFAULT)
    data["splitt"] = {}
    with pytest.raises(RealmixError, match="unknown key 'splitt'"):
        params.parse(data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset__source": "mnist"}, r"dataset.source='mnist' is not allowed; choose one of: digits"),
        ({"preaugment__augment": "rotate"}, r"preaugment.augment='rotate' is not allowed"),
        ({"preaugment__storage": "disk"}, r"preaugment.storage='disk' is not allowed; choose one of: materialized, "
                                          r"virtual"),
        ({"dataset__name": "cifar-10"}, r"dataset.name='cifar-10' is not a valid dataset name"),
        ({"dataset__name": "my.data"}, r"not a valid dataset name"),
        ({"split__nvalid": "100"}, r"split.nvalid must be an integer"),
        ({"split__nvalid": -1}, r"split.nvalid=-1 must be >= 0"),
        ({"split__seeds": 1}, r"split.seeds must be a list"),
        ({"split__sizes": [0]}, r"split.sizes contains 0"),
        ({"dataset__download": "yes"}, r"dataset.download must be true or false"),
        ({"mismatch__size": 99}, r"mismatch.size=99 is not one of split.sizes=\[30\]; .*set mismatch.levels: \[\] "
                                 r"to run without the class-mismatch protocol .*or set mismatch.size to one of \[30\]"),
        ({"mismatch__levels": [0, 33]}, r"mismatch.levels has 33 but mismatch.unlabelled_classes has no entry"),
        ({"preaugment__copies": [0]}, r"preaugment.copies contains 0"),
        ({"dataset__img_size": 12}, r"multiple of 8 for digits"),
    ],
)
def test_bad_values_fail_with_one_line(change, message):
    with pytest.raises(RealmixError, match=message) as e:
        parse_with(**change)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RealmixError, match="params file not found"):
        params.load(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("split: [unclosed")
    with pytest.raises(RealmixError, match="not valid YAML"):
        params.load(tmp_path / "p.yaml")


def test_every_registered_algorithm_has_its_section_its_docs_row_and_its_train_params():
    """The registry is the one list: params.yaml, the docs' table and dvc.yaml's train stages follow it."""
    assert [k for k in DEFAULT if k in ALGORITHMS] == list(ALGORITHMS)  # a section each, in registry order
    assert [name for name in params.SECTIONS if name in ALGORITHMS] == list(ALGORITHMS)
    training = (ROOT / "docs" / "training.md").read_text()
    table = training.split("| algorithm | what one step computes |")[1].split("\n\n")[0]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(ALGORITHMS)
    reads = {key for entry in ALGORITHMS.values() for key in entry.algorithm.declare(entry.params()).reads}
    assert reads == {"tsa"} and reads <= set(params.SCALARS)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = {name: s for name, s in stages.items() if s["cmd"].startswith("python stages/train.py")}
    # one train stage per list of runs (train.<key>), matrixed over that list
    lists = sorted(f"${{train.{k}}}" for k in params.RUN_LISTS)
    assert sorted(s["matrix"]["algorithm"] for s in train.values()) == lists
    for name, stage in train.items():  # the run's section and the top-level params an algorithm reads
        assert {"${item.algorithm}", *reads} <= set(stage["params"]), name


def test_algorithm_sections_read_as_attributes_and_by_name():
    p = params.parse({"realmix": {"w_match": 10}, "tsa": "linear_schedule"})
    assert p.realmix is p.algorithm("realmix") is p.algorithms["realmix"] and p.realmix.w_match == 10.0
    assert list(p.algorithms) == list(ALGORITHMS) and p.scalars() == {"tsa": "linear_schedule"}
    with pytest.raises(AttributeError, match="realmixx"):
        p.realmixx  # noqa: B018
    with pytest.raises(RealmixError, match=r"pi_model\.warmup_pos=0\.0 must be in \(0, 1\]"):
        params.parse({"pi_model": {"warmup_pos": 0.0}})  # a shared dataclass names the section it was read from
    with pytest.raises(RealmixError, match=r"train\.algorithms has unknown algorithm 'realmixx' \(did you mean "):
        params.parse({"train": {"algorithms": ["realmixx"]}})
