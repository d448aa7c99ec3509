"""VideoGenerator (shared by the batch job and the endpoint): grouping, defaults, per-request errors, MP4 output, and
per-request isolation under real failures (an encoder that refuses, a transformer that raises)."""

from dataclasses import replace

import pytest
import torch

from dcm.generation import RequestLimits, ResolvedRequest, VideoGenerator, VideoRequest, check_request
from dcm.io.video import decode_mp4


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator("tiny-wan", device="cpu")


def test_groups_compatible_requests_and_keeps_order(generator):
    requests = [
        VideoRequest(id="a", prompt="a red circle", seed=1),
        VideoRequest(id="b", prompt="a blue square", seed=2, num_frames=9, height=32, width=32),
        VideoRequest(id="c", prompt="green", seed=3),
        VideoRequest(id="bad", prompt="x", seed=4, num_frames=10),
    ]
    results = generator.generate(requests)
    assert [r.id for r in results] == ["a", "b", "c", "bad"]
    assert [r.batch_size for r in results] == [2, 1, 2, 0]
    assert results[3].error.startswith("num_frames must be 4*n + 1") and results[3].mp4 is None
    video = decode_mp4(results[1].mp4)
    assert video.frames.shape == (9, 32, 32, 3)
    default = generator.defaults
    assert decode_mp4(results[0].mp4).frames.shape == (default.num_frames, default.height, default.width, 3)


def test_same_seed_same_video_batched_or_not(generator):
    alone = generator.generate([VideoRequest(id="x", prompt="a red circle", seed=11)])[0]
    batched = generator.generate(
        [VideoRequest(id="y", prompt="other", seed=12), VideoRequest(id="x", prompt="a red circle", seed=11)]
    )[1]
    a, b = decode_mp4(alone.mp4).frames.astype(int), decode_mp4(batched.mp4).frames.astype(int)
    assert abs(a - b).max() <= 2  # identical up to encoder rounding of 1-level differences


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"prompt": " "}, "prompt must be a non-empty"),
        ({"prompt": "x" * 3000}, "prompt must be at most"),
        ({"seed": -5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"num_frames": 1000}, r"num_frames must be an integer in \[1, 129\]"),
        ({"height": "64"}, "height must be an integer in"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be an integer in \[1, 8\]"),
        ({"guidance_scale": 0.2}, "guidance_scale must be a number"),
    ],
)
def test_request_checks_name_field_and_value(changes, match):
    request = VideoRequest(**{"id": "r", "prompt": "ok", "seed": 0, **changes})
    with pytest.raises(ValueError, match=match):
        check_request(request, RequestLimits())


def test_steps_outside_dcm_schedule_are_request_errors(generator):
    result = generator.generate([VideoRequest(id="s", prompt="ok", seed=0, num_inference_steps=9)])[0]
    assert result.error and "num_inference_steps" in result.error


# -- isolation: a request that fails alone costs only itself ---------------------------------------------------

SMALL = {"num_frames": 9, "height": 32, "width": 32}


def trusted(generator, request_id: str, **config_changes) -> ResolvedRequest:
    """A resolved request built by hand: the generator trusts it, so it reaches the sampler or the encoder as is."""
    config = replace(generator.defaults, **{**SMALL, **config_changes})
    return ResolvedRequest(id=request_id, prompt="a red circle", seed=0, negative_prompt=None, config=config)


def test_a_request_whose_encode_fails_errs_alone(generator):
    """The real trigger: ffmpeg refuses 2**32 fps (validation would refuse it; a trusted request skips that)."""
    requests = [VideoRequest(id="ok-1", prompt="a", **SMALL), trusted(generator, "bad-fps", fps=2**32),
                VideoRequest(id="ok-2", prompt="b", **SMALL)]  # fmt: skip
    results = generator.generate(requests)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.startswith("encoding failed:") and results[1].mp4 is None
    assert all(decode_mp4(r.mp4).frames.shape == (9, 32, 32, 3) for r in (results[0], results[2]))


def test_a_request_beyond_the_positional_table_errs_alone(generator):
    """The real trigger: 129 frames on a 32-position RoPE table (the pipeline's own geometry check raises)."""
    results = generator.generate(
        [trusted(generator, "long", num_frames=129), VideoRequest(id="ok", prompt="a", **SMALL)]
    )
    assert not results[0].ok and "num_frames must be <= 125" in results[0].error
    assert results[1].ok


class CountingGenerator(VideoGenerator):
    """Counts sampler calls and fails the encoder for chosen ids (fault injection from outside the class)."""

    def __init__(self, *args, failing_encodes=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.failing_encodes = set(failing_encodes)
        self.sample_calls: list[list[str]] = []

    def sample(self, config, group, on_step=None):
        self.sample_calls.append([r.id for r in group])
        return super().sample(config, group, on_step)

    def encode(self, request, frames):
        if request.id in self.failing_encodes:
            raise OSError(f"disk full while encoding {request.id}")
        return super().encode(request, frames)


@pytest.fixture(scope="module")
def counting():
    return CountingGenerator("tiny-wan", device="cpu", failing_encodes={"enc-fails"})


def test_a_prompt_that_makes_the_transformer_raise_costs_only_itself(counting):
    """A forward pre-hook on the transformer raises when the poisoned prompt's embedding reaches it: the group of
    four fails once, then runs one by one, and the three other requests get their videos."""
    poison = counting.pipeline.encode_prompts(["POISON"])["encoder_hidden_states"][0]

    def hook(module, args, kwargs):
        if any(torch.equal(row, poison) for row in kwargs["encoder_hidden_states"]):
            raise RuntimeError("the transformer met the poisoned prompt")

    handle = counting.pipeline.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    counting.sample_calls.clear()
    try:
        prompts = ["a red circle", "POISON", "a blue square", "green"]
        results = counting.generate(
            [VideoRequest(id=f"r{i}", prompt=p, seed=i, **SMALL) for i, p in enumerate(prompts)]
        )
    finally:
        handle.remove()
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error == "generation failed: RuntimeError: the transformer met the poisoned prompt"
    assert counting.sample_calls == [["r0", "r1", "r2", "r3"], ["r0"], ["r1"], ["r2"], ["r3"]]
    assert all(r.batch_size == 1 for r in results if r.ok)  # retried alone


def test_an_encode_failure_does_not_resample_the_group(counting):
    counting.sample_calls.clear()
    results = counting.generate([VideoRequest(id=i, prompt="a", seed=n, **SMALL)
                                 for n, i in enumerate(["x", "enc-fails", "y"])])  # fmt: skip
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "encoding failed: OSError: disk full while encoding enc-fails"
    assert counting.sample_calls == [["x", "enc-fails", "y"]]


def test_a_long_prompt_works_on_the_demo_model():
    """No hidden 2000-character limit anywhere: 3000 characters with max_prompt_chars 5000 give a video."""
    demo = VideoGenerator("demo", device="cpu", limits=RequestLimits(max_prompt_chars=5000))
    prompt = ("a small red circle moving left slowly " * 80)[:3000]
    result = demo.generate([VideoRequest(id="long", prompt=prompt, seed=1)])[0]
    assert result.ok, result.error
    assert decode_mp4(result.mp4).frames.shape == (17, 64, 64, 3)
