"""asr.train_schema: train.py's config is type-checked when composed (one line naming the key, the value and the
expected type), and a training budget that trains nothing is refused; every experiment and debug config passes."""

from __future__ import annotations

import pytest
from asr_helpers import CONF_DIR, compose_train

from asr.train_schema import check_train_config
from common.cli import known_message
from common.schema import ConfigTypeError, ConfigValueError


def checked(*overrides: str) -> None:
    check_train_config(compose_train([*overrides, "paths.root_dir=/nowhere"]))


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is of type str, expected an integer or null"),
    ("trainer.max_epochs=true", "trainer.max_epochs=True is of type bool, expected an integer or null"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is of type float, expected an integer or null"),
    ("trainer.gradient_clip_val=high", "trainer.gradient_clip_val='high' is of type str, expected a number or null"),
    ("trainer.log_every_n_steps=often",
     "trainer.log_every_n_steps='often' is of type str, expected an integer or null"),
    ("trainer.enable_progress_bar=3", "trainer.enable_progress_bar=3 is of type int, expected true or false or null"),
    ("trainer.devices=two", None),  # devices takes a string too ("auto"): Lightning checks its own values
    ("seed=abc", "seed='abc' is of type str, expected an integer"),
    ("data.batch_size=1.5", "data.batch_size=1.5 is of type float, expected an integer"),
    ("module.optimizer.lr=fast", "module.optimizer.lr='fast' is of type str, expected a number"),
    ("module.scheduler.warmup_steps=[1]", "module.scheduler.warmup_steps=[1] is of type list, expected an integer"),
    ("model.encoder.hidden_size=big", "model.encoder.hidden_size='big' is of type str, expected an integer"),
    ("decoding.beam_size=4.0", "decoding.beam_size=4.0 is of type float, expected an integer"),
    ("test=yes", "test='yes' is of type str, expected true or false"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_type(override, expected):
    if expected is None:
        checked(override)
        return
    with pytest.raises(ConfigTypeError) as error:
        checked(override)
    message = known_message(error.value)
    assert message.startswith(f"config: {expected}. Fix: give {override.split('=')[0]} ") and "\n" not in message


@pytest.mark.parametrize("override", ["trainer.max_epochs=7", "trainer.max_epochs=null", "trainer.max_epochs=-1",
                                      "trainer.gradient_clip_val=1", "module.optimizer.lr=1", "module.scheduler=null",
                                      "trainer.max_time=00:00:10:00", "decoding.sparse_min_sparsity=null"])
def test_values_of_the_right_type_pass(override):
    checked(override)


@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.max_epochs=-2", "+trainer.max_steps=0",
                                      "+trainer.limit_train_batches=0"])
def test_a_budget_that_trains_nothing_is_refused(override):
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigValueError, match=f"^config: {key}=-?[0-9]+ trains nothing: .* Fix: "):
        checked(override)


@pytest.mark.parametrize("experiment", [None, *sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))])
@pytest.mark.parametrize("debug", [None, *sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))])
def test_every_experiment_and_debug_config_passes(experiment, debug):
    checked(*([f"+experiment={experiment}"] if experiment else []), *([f"debug={debug}"] if debug else []))
