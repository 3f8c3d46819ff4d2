from datetime import timedelta
from pathlib import Path

import pytest

from refloop.domain.policy import Policy, PolicyError, load_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "policy.example.toml"


def test_example_policy_file_equals_the_defaults():
    assert load_policy(EXAMPLE) == Policy()


def test_short_policy_overrides_only_what_it_names(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('arrival_grace = "5m"\n[stages.final_report]\nstat = "10m"\nurgent = "20m"\nroutine = "1h"\n')
    p = load_policy(f)
    assert p.arrival_grace == timedelta(minutes=5)
    assert p.stages.final_report.for_priority("stat") == timedelta(minutes=10)
    assert p.stages.booking == Policy().stages.booking


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('arrival_grace = "soon"', "arrival_grace"),
        ('[stages.delivery]\nstat = "1m"\nurgent = "1m"', "stages.delivery.routine: Field required"),
        ('[stages.deliveri]\nstat = "1m"', "stages.deliveri: Extra inputs are not permitted"),
        ('escalation_offsets = ["1h", "0m", "2h"]', "must not decrease"),
        ('[stages.archive]\nstat = "0m"\nurgent = "1h"\nroutine = "1h"', "stages.archive.stat must be positive"),
        ("arrival_grace = ", "not valid TOML"),
    ],
)
def test_invalid_policy_fails_at_load_with_a_clear_message(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_missing_policy_file_is_named():
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy("/nonexistent/policy.toml")
