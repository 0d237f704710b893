"""The npe2 manifest validates and the readers open biomedseg's outputs (that no other package
imports napari or Qt is tests/test_architecture.py's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "biomedseg"


def test_manifest_validates():
    npe2 = pytest.importorskip("npe2", reason="npe2 comes with napari: pip install -e '.[napari]'")
    manifest = npe2.PluginManifest.from_file(PKG / "napari_plugin" / "napari.yaml")
    assert manifest.name == "biomedseg"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Model", "Predict", "Review", "Save corrections", "Retrain"}
    for command in manifest.contributions.commands:  # every python_name resolves
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), command.python_name


@pytest.mark.slow  # starts a process
def test_manifest_is_installed_as_an_entry_point():
    npe2 = pytest.importorskip("npe2", reason="npe2 comes with napari: pip install -e '.[napari]'")
    import subprocess
    import sys

    try:
        manifest = npe2.PluginManifest.from_distribution("biomedseg")
    except Exception as exc:  # noqa: BLE001 - not installed with its entry point
        pytest.skip(f"biomedseg is not installed with its napari entry point here ({exc})")
    assert manifest.name == "biomedseg"
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "biomedseg"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_readers_open_predicted_masks_and_geojson(tmp_path):
    pytest.importorskip("napari", reason="the readers build napari colormaps: pip install -e '.[napari]'")
    from biomedseg.io.ome import write_ome_tiff
    from biomedseg.io.writers import write_png
    from biomedseg.napari_plugin.readers import get_reader

    mask = np.zeros((32, 48), np.uint8)
    mask[4:20, 6:30] = 2
    write_ome_tiff(tmp_path / "a.tif", mask, None)
    assert get_reader(str(tmp_path / "a.tif")) is None  # a plain image: napari's own reader
    write_png(tmp_path / "a_overlay.png", np.zeros((32, 48, 3), np.uint8))  # what predict writes beside it
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "a.tif"))(str(tmp_path / "a.tif"))
    assert kind == "labels" and np.array_equal(data, mask)
    assert kwargs["colormap"].color_dict[0][3] == 0 and kwargs["colormap"].color_dict[2][3] == 1
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[6, 4], [30, 4], [30, 20], [6, 20], [6, 4]]]},
                "properties": {"classification": {"name": "cell", "color": [255, 0, 0]}},
            }
        ],
    }
    import json

    (tmp_path / "a.geojson").write_text(json.dumps(doc))
    [(polygons, kwargs, kind)] = get_reader(str(tmp_path / "a.geojson"))(str(tmp_path / "a.geojson"))
    assert kind == "shapes" and len(polygons) == 1 and kwargs["properties"]["class"] == ["cell"]
    assert polygons[0][0].tolist() == [4.0, 6.0]  # (row, column)
    assert get_reader(str(tmp_path)) is None  # a folder that is not a run


def test_layer_data_is_checked_as_the_zarr_reader_checks_an_array():
    from biomedseg.core.errors import UserError
    from biomedseg.napari_plugin.session import layer_image

    with pytest.raises(UserError, match="^empty: the layer holds no image data$"):
        layer_image(np.zeros((0, 0), np.uint8), False, "empty")
    with pytest.raises(UserError, match="^stack: array of shape \\(2, 5, 8, 8\\) is a stack"):
        layer_image(np.zeros((2, 5, 8, 8), np.uint8), False, "stack")
    rgba = np.arange(4 * 6 * 4, dtype=np.uint8).reshape(4, 6, 4)
    np.testing.assert_array_equal(layer_image(rgba, True, "rgba"), rgba[:, :, :3])
    grey = np.arange(24, dtype=np.uint16).reshape(4, 6)
    np.testing.assert_array_equal(layer_image(grey, False, "grey"), grey[:, :, None])
    planes = np.stack([grey, grey + 1, grey + 2])  # (C, H, W) as napari holds a channel stack
    np.testing.assert_array_equal(layer_image(planes, False, "planes"), np.moveaxis(planes, 0, 2))
