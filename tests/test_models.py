import pytest
import torch

from cnnkit.models import create_model, list_models, register_model
from cnnkit.reports.summary import format_summary, summarize


def test_registry_lists_the_tutorial_models():
    assert {"tutorial", "tutorial-extra-conv"} <= set(list_models())


def test_tutorial_has_the_tutorials_parameter_count_and_shapes():
    model = create_model("tutorial", num_classes=10, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 2_122_186
    rows = summarize(model, image_size=32)
    assert [(row.name, row.output_shape, row.parameters) for row in rows] == [
        ("conv1", (32, 32, 32), 896),
        ("pool1", (32, 16, 16), 0),
        ("conv2", (64, 16, 16), 18_496),
        ("pool2", (64, 8, 8), 0),
        ("flatten", (4096,), 0),
        ("dense1", (512,), 2_097_664),
        ("dense2", (10,), 5_130),
    ]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_extra_conv_model_inserts_a_64_filter_conv_after_the_first():
    model = create_model("tutorial-extra-conv")
    names = [row.name for row in summarize(model, 32)]
    assert names[:3] == ["conv1", "conv1_extra", "pool1"]
    assert model.conv1_extra.out_channels == 64 and model.conv2.in_channels == 64
    assert sum(p.numel() for p in model.parameters()) == 2_122_186 - 18_496 + 18_496 + 36_928


def test_pooling_before_relu_matches_kerass_order_exactly():
    model = create_model("tutorial", image_size=16).eval()
    images = torch.randn(4, 3, 16, 16)
    relu, pool = torch.relu, torch.nn.functional.max_pool2d
    x = pool(relu(model.conv1(images)), 2)
    x = pool(relu(model.conv2(x)), 2)
    keras_order = model.dense2(relu(model.dense1(x.flatten(1))))
    torch.testing.assert_close(model(images), keras_order)


def test_model_adapts_to_classes_and_image_size_and_remembers_its_arguments():
    model = create_model("tutorial", num_classes=3, image_size=64)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert model.model_name == "tutorial"
    assert model.model_arguments == {"num_classes": 3, "image_size": 64}


def test_summary_text_has_totals():
    text = format_summary(create_model("tutorial"), 32)
    assert "Total params: 2,122,186" in text and "Trainable params: 2,122,186" in text
    assert "(None, 64, 8, 8)" in text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "tutorail"}, "Did you mean 'tutorial'"),
        ({"name": "tutorial", "num_classes": 1}, "num_classes=1"),
        ({"name": "tutorial", "image_size": 30}, "image_size=30"),
    ],
)
def test_bad_arguments_fail_with_the_received_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        create_model(**arguments)


def test_register_model_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda num_classes, image_size: None, name="tutorial")
