"""Settings reject bad values by field name, and round-trip through plain dicts."""

import pytest

from engine.errors import SettingsError
from engine.settings import PRESETS, CacheType, LoadSettings, SamplingSettings


@pytest.mark.parametrize(
    "values, field",
    [
        ({"temperature": 9.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": "high"}, "min_p"),
        ({"mirostat": 3}, "mirostat"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"json_schema": "{not json"}, "json_schema"),
        ({"grammar": 'root ::= "a"', "json_schema": "{}"}, "json_schema"),
        ({"logit_bias": {"-3": 1.0}}, "logit_bias"),
        ({"temprature": 1.0}, "temprature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_sampling_values_name_the_field(values, field):
    with pytest.raises(SettingsError) as err:
        SamplingSettings.from_dict(values)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_quantized_v_cache_needs_flash_attention():
    assert LoadSettings(type_v=CacheType.Q8_0).type_v == CacheType.Q8_0
    with pytest.raises(SettingsError, match="type_v"):
        LoadSettings.from_dict({"type_v": "q8_0", "flash_attn": "off"})
    with pytest.raises(SettingsError, match="type_k"):
        LoadSettings.from_dict({"type_k": "q9"})


def test_round_trip_and_presets():
    s = SamplingSettings(temperature=0.3, stop=("\n\n",), logit_bias=((5, -100.0),))
    assert SamplingSettings.from_dict(s.to_dict()) == s
    assert LoadSettings.from_dict(LoadSettings().to_dict()) == LoadSettings()
    assert set(PRESETS) == {"Precise", "Balanced", "Creative"}
    for spec in SamplingSettings.field_specs():
        assert spec.metadata["help"], f"{spec.name} needs a one-line explanation"
