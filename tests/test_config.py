import pytest

from cvae.config import PRESETS, REPORTED_TRAIN_LOSS, TrialConfig, preset

# docs/design.md §1's table: (condition_mode, epochs, grey_weight, warmup_epochs)
DESIGN_TABLE = {
    "model_1": ("global", 8, 0.0, 0),
    "model_2": ("per_class", 8, 0.0, 0),
    "model_3": ("per_class", 40, 0.0, 0),
    "model_4": ("per_class", 9, 0.32, 1),
    "model_5": ("per_class", 41, 0.32, 1),
}


@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_presets_match_design_table(name):
    config = preset(name)
    assert (config.condition_mode, config.epochs, config.grey_weight, config.warmup_epochs) == DESIGN_TABLE[name]
    # Reference architecture and optimiser everywhere.
    assert (config.latent_dim, config.dropout, config.l2, config.learning_rate, config.batch_size) == (
        40, 0.45, 0.001, 1e-3, 32)
    assert config.output_activation == "relu" and config.grey_threshold == 0.0


def test_preset_names_and_reported_losses_agree():
    assert set(PRESETS) == set(DESIGN_TABLE) == set(REPORTED_TRAIN_LOSS)


def test_config_is_frozen():
    with pytest.raises(Exception):
        TrialConfig().latent_dim = 3


def test_from_dict_round_trip_and_coercion():
    config = TrialConfig.from_dict({"latent_dim": 16.0, "grey_weight": 1, "condition_mode": "global"})
    assert config.latent_dim == 16 and isinstance(config.grey_weight, float)
    assert TrialConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("values, message", [
    ({"latent_dimm": 3}, "unknown TrialConfig key(s) 'latent_dimm'"),
    ({"condition_mode": "both"}, "condition_mode='both'; allowed: global, per_class"),
    ({"dataset": "cifar"}, "allowed: mnist, mnist-5k, fashion-mnist"),
    ({"latent_dim": 0}, "latent_dim=0 must be in [1, 1024]"),
    ({"latent_dim": 2.5}, "latent_dim=2.5 must be of type int"),
    ({"grey_weight": -1}, "grey_weight=-1.0 must be in [0, 1e6]"),
    ({"grey_threshold": 0.3}, "grey_threshold=0.3 must be in [0, 0.25)"),
    ({"dropout": 1.0}, "dropout=1.0 must be in [0, 1)"),
    ({"epochs": True}, "epochs=True must be of type int"),
    ({"learning_rate": float("nan")}, "learning_rate=nan must be a finite number"),
])
def test_from_dict_errors_name_key_and_allowed_values(values, message):
    with pytest.raises(ValueError) as error:
        TrialConfig.from_dict(values)
    assert message in str(error.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys: dataset, data_path"):
        TrialConfig.from_dict({"nope": 1})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'model_9'; allowed: model_1"):
        preset("model_9")
