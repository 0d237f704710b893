"""The compiled inference network: same probabilities as eager, one graph, eager fallback, the auto rule."""

import numpy as np
import pytest
import torch

from biomedseg.core.errors import UserError
from biomedseg.engine.compiled import CompiledForward, normalize_compile, resolve_compile
from biomedseg.engine.defaults import COMPILE_MIN_TILES
from biomedseg.engine.sliding_window import SlidingWindowPredictor
from biomedseg.stream.predictor import StreamingPredictor

pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny(**kw):
    from biomedseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", 1, 3, depth=2, base_channels=4, num_res_units=1, **kw).eval()


@pytest.fixture
def image():  # 160 x 176 at tile 64, overlap 0.25: 3 x 3 tiles, so batches of 4 leave a last batch of 1
    return np.random.default_rng(3).normal(size=(1, 160, 176)).astype(np.float32)


def test_inductor_compiled_probabilities_equal_eager(image):
    torch._dynamo.reset()
    model = tiny()
    eager = SlidingWindowPredictor(model, 64, 0.25, batch_size=4, tta="flips")
    compiled = SlidingWindowPredictor(model, 64, 0.25, batch_size=4, tta="flips", compile=True)
    streamed = StreamingPredictor(model, 64, 0.25, batch_size=4, tta="flips", compile=True)
    ref = eager.predict_proba(image)
    got = compiled.predict_proba(image)
    assert isinstance(compiled.model, CompiledForward) and compiled.model.active  # it did not fall back
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(streamed.predict_proba(image), ref, atol=1e-4)
    np.testing.assert_array_equal(compiled.predict_proba(image), got)  # deterministic


def test_last_batch_is_padded_to_one_graph(image):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny(classifier_head=True)
    sp = StreamingPredictor(model, 64, 0.25, batch_size=4, compile="aot_eager")
    ref = SlidingWindowPredictor(model, 64, 0.25, batch_size=4)
    np.testing.assert_allclose(sp.predict_proba(image), ref.predict_proba(image), atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # batches of 4, 4 and 1 (padded): one graph
    with torch.inference_mode():  # as the predictors call it
        y = sp.model(torch.zeros(1, 1, 64, 64))  # the image-level head's logits lose the padding too
    assert y.shape[0] == 1 and sp.model.head.class_logits.shape == (1,)
    assert counters["stats"]["unique_graphs"] == 1


def test_prediction_goes_on_eagerly_when_compiling_fails(image, caplog):
    from torch._dynamo import register_backend

    @register_backend
    def biomedseg_test_failing_inference_backend(gm, example_inputs):  # what a missing C++ compiler looks like
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    torch._dynamo.reset()
    model = tiny()
    ref = SlidingWindowPredictor(model, 64, 0.25, batch_size=4).predict_proba(image)
    with caplog.at_level("WARNING", logger="biomedseg"):
        sp = StreamingPredictor(model, 64, 0.25, batch_size=4, compile="biomedseg_test_failing_inference_backend")
        got = sp.predict_proba(image)
    assert any(
        "torch.compile failed" in r.getMessage() and "InvalidCxxCompiler" in r.getMessage() for r in caplog.records
    )
    assert not sp.model.active
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_real_errors_are_not_swallowed_by_the_fallback():
    sp = SlidingWindowPredictor(tiny(), 64, 0.25, batch_size=2, compile="aot_eager")
    with pytest.raises(RuntimeError):
        sp.model(torch.zeros(2, 5, 64, 64))  # 5 channels into a 1-channel network: eager fails too


def test_auto_compiles_large_cpu_jobs_only(monkeypatch):
    import biomedseg.runtime.device

    monkeypatch.setattr(biomedseg.runtime.device, "cpp_compiler_available", lambda: True)
    assert resolve_compile("auto", COMPILE_MIN_TILES, "cpu") is True
    assert resolve_compile("auto", COMPILE_MIN_TILES - 1, "cpu") is False
    assert resolve_compile("auto", 10**9, "cuda") is False  # not measured on GPUs
    assert resolve_compile("on", 1, "cpu") is True and resolve_compile("off", 10**9, "cpu") is False
    monkeypatch.setattr(biomedseg.runtime.device, "cpp_compiler_available", lambda: False)
    assert resolve_compile("auto", 10**9, "cpu") is False  # inductor needs a C++ compiler
    assert normalize_compile("aot_eager") == "aot_eager" and normalize_compile(None) == "auto"
    with pytest.raises(UserError, match="--compile"):
        normalize_compile("sometimes")


def fake_run(run_dir):
    from conftest import write_fake_run

    kw = {"depth": 2, "base_channels": 4, "num_res_units": 1}
    torch.manual_seed(0)
    return write_fake_run(
        run_dir,
        "unet",
        tiny().state_dict(),
        None,
        [],
        patch_size=64,
        batch_size=8,
        model_kwargs=kw,
        n_classes=3,
        overlap=0.25,
    )


def write_images(folder, shapes):
    from biomedseg.io import write_png

    folder.mkdir()
    rng = np.random.default_rng(5)
    for i, shape in enumerate(shapes):
        write_png(folder / f"im{i}.png", rng.integers(0, 255, size=shape, dtype=np.uint8))
    return folder


def test_predict_auto_counts_the_tile_forwards_still_to_do(tmp_path, monkeypatch):
    import biomedseg.engine.compiled
    from biomedseg.engine.sliding_window import tile_starts
    from biomedseg.inference.predict.batch import predict

    run = fake_run(tmp_path / "run")
    images = write_images(tmp_path / "in", [(200, 300), (40, 70), (100, 100)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "im2.png").write_bytes(b"done")  # an existing mask: not predicted again, not counted
    asked = []
    monkeypatch.setattr(
        biomedseg.engine.compiled, "resolve_compile", lambda mode, n, device="cpu": asked.append((mode, n)) or False
    )
    predict(run, [images], out, tta="flips", quiet=True)
    n = len(tile_starts(200, 64, 0.25)) * len(tile_starts(300, 64, 0.25)) + 2  # 40 x 70: padded to 64 x 70, 2 tiles
    assert asked == [("auto", 4 * n)]  # x 4 flips


def test_predict_compiled_writes_the_eager_masks_in_memory_and_streamed(tmp_path):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.io import read_raw

    run = fake_run(tmp_path / "run")
    images = write_images(tmp_path / "in", [(150, 170)])
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for name, compile, stream in [
        ("eager", "off", False),
        ("compiled", "aot_eager", False),
        ("streamed", "aot_eager", True),
    ]:
        s = predict(
            run,
            [images],
            tmp_path / name,
            quiet=True,
            overlays=False,
            compile=compile,
            stream=stream,
            output_format="tiff",
        )
        assert len(s.done) == 1 and not s.failed
        assert counters["stats"]["unique_graphs"] == (0 if compile == "off" else 1)  # one graph, reused
    ref = read_raw(tmp_path / "eager" / "im0.tif")
    np.testing.assert_array_equal(read_raw(tmp_path / "compiled" / "im0.tif"), ref)
    np.testing.assert_array_equal(read_raw(tmp_path / "streamed" / "im0.tif"), ref)
