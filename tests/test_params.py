import copy

import pytest
import yaml

from realmix import params
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
