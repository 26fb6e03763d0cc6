"""``SAM2VideoPredictor.track_stream`` (frames from an iterator, memory constant in the stream's length).

At the test config with every weight redrawn (the reference's modules, randomised and converted, as in
``test_sam2_video_predictor_live``): the stream over the decoded JPEG frames of a clip gives the same
masks as ``propagate_in_video`` over the folder (prompts on the first frame), and the same as the
reference API's interactive sequence when objects are added and re-prompted mid-clip; after 50 frames
the state holds a bounded set of outputs (the memory bank), no masks, features or prompts of past
frames, and its arrays take the same number of bytes on frame 30 as on frame 60.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sam2")

from sam_jax.models.sam2.config import get_config
from sam_jax.predictors.sam2_video import COND, NON_COND, stream_bytes_per_object

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_video_clips import write_clip
from test_sam2_video_predictor_live import small_pair

# Same programs, same banks: the stream and propagate_in_video agree to the bit; 1e-5 is the brief's bound.
TOL = 1e-5


def _decoded(folder: Path) -> list[np.ndarray]:
    """The clip's JPEG frames decoded as ``init_state`` decodes them (PIL, RGB)."""
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))]


def _clip(tmp_path, num_frames: int = 20):
    folder, clip = write_clip("shapes", tmp_path, "jpg", num_frames)
    return folder, clip, _decoded(folder)


def _max_diff(got: list, want: list) -> float:
    assert [(t, ids) for t, ids, _ in got] == [(t, ids) for t, ids, _ in want]
    return max(float(np.max(np.abs(g[2] - w[2]))) if g[2].size else 0.0 for g, w in zip(got, want, strict=True))


def test_stream_equals_propagate_in_video(tmp_path):
    _, ours = small_pair()
    folder, clip, frames = _clip(tmp_path)
    h, w = frames[0].shape[:2]
    third = np.array([[w * 0.1, h * 0.1]], np.float32)  # a third object: the background corner
    prompts = {
        0: [
            (1, clip.points[0, :1], np.array([1], np.int32), None),
            (2, None, None, clip.boxes[0, 1]),
            (7, third, np.array([1], np.int32), None),
        ]
    }
    state = ours.init_state(str(folder))
    for obj_id, pts, labels, box in prompts[0]:
        ours.add_new_points_or_box(state, 0, obj_id, pts, labels, box=box)
    want = [(t, list(ids), m) for t, ids, m in ours.propagate_in_video(state)]
    got = list(ours.track_stream(iter(frames), prompts, num_frames=len(frames)))
    assert len(got) == len(frames)
    err = _max_diff(got, want)
    fg = np.mean([np.mean(m > 0) for _, _, m in got])
    print(f"stream vs propagate_in_video: max |diff| {err:.3g} over {len(got)} frames, foreground {fg:.3f}")
    assert 0 < fg < 1
    assert err <= TOL, err


def test_stream_equals_the_interactive_sequence(tmp_path):
    """An object added on frame 5 and a new prompt for object 1 on frame 9: the stream equals the
    reference API used frame by frame (prompts added as the propagation reaches their frame)."""
    _, ours = small_pair()
    folder, clip, frames = _clip(tmp_path, 16)
    one = np.array([1], np.int32)
    prompts = {
        0: [(1, clip.points[0, :1], one, None), (2, clip.points[0, 1:], one, None)],
        5: [(3, None, None, clip.boxes[5, 0])],
        9: [(1, clip.points[9, :1], one, None)],
    }
    state = ours.init_state(str(folder))
    want = []
    starts = [*sorted(prompts), len(frames)]
    for start, stop in itertools.pairwise(starts):
        for obj_id, pts, labels, box in prompts[start]:
            ours.add_new_points_or_box(state, start, obj_id, pts, labels, box=box)
        want += [(t, list(ids), m) for t, ids, m in ours.propagate_in_video(state, start, stop - 1 - start)]
    got = list(ours.track_stream(frames, prompts, num_frames=len(frames)))
    assert [ids for _, ids, _ in got][4:6] == [[1, 2], [1, 2, 3]]
    err = _max_diff(got, want)
    print(f"stream vs interactive sequence: max |diff| {err:.3g} over {len(got)} frames")
    assert err <= TOL, err


def _array_bytes(tree, seen: set | None = None) -> int:
    """Bytes of the distinct arrays in ``tree`` (entries share the memory position encoding)."""
    seen = set() if seen is None else seen
    if isinstance(tree, dict):
        return sum(_array_bytes(v, seen) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_array_bytes(v, seen) for v in tree)
    if id(tree) in seen or not hasattr(tree, "nbytes"):
        return 0
    seen.add(id(tree))
    return int(tree.nbytes)


def test_stream_memory_is_bounded(tmp_path):
    """60 frames (a short clip looped): the outputs kept per object stay within the bank's size,
    past frames keep no masks, features or prompts, and the state's arrays stop growing."""
    _, ours = small_pair()
    _, clip, frames = _clip(tmp_path, 12)
    cfg = get_config("sam2_test")
    one = np.array([1], np.int32)
    prompts = {
        0: [(1, clip.points[0, :1], one, None), (2, clip.points[0, 1:], one, None)],
        3: [(3, np.array([[10.0, 10.0]], np.float32), one, None)],
    }
    stream = ours.track_stream((frames[t % len(frames)] for t in range(60)), prompts)
    sizes = {}
    for t, ids, masks in stream:
        assert masks.shape[:2] == (len(ids), 1)
        if t not in (29, 59):
            continue
        state = stream.gi_frame.f_locals["state"]  # the generator's own state, between two frames
        for obj_idx, out in state["output_dict_per_obj"].items():
            assert len(out[COND]) == 1
            kept = {**out[COND], **out[NON_COND]}
            with_memory = [f for f, o in kept.items() if o["maskmem_features"] is not None]
            assert len(with_memory) <= cfg.num_maskmem, (obj_idx, sorted(with_memory))
            assert len(kept) <= cfg.max_obj_ptrs_in_encoder, (obj_idx, sorted(kept))
            assert all(o["pred_masks"] is None for o in kept.values())
            assert min(kept) == min(out[COND]) and min(out[NON_COND]) >= t + 1 - cfg.max_obj_ptrs_in_encoder
            assert not state["point_inputs_per_obj"][obj_idx] and not state["frames_tracked_per_obj"][obj_idx]
        assert not state["cached_features"]
        shared = state["constants"]["maskmem_pos_enc"]
        sizes[t] = _array_bytes(state["output_dict_per_obj"], {id(shared)})
    print(f"stream state arrays: {sizes} bytes, cap 3 x {stream_bytes_per_object(cfg)}")
    assert sizes[29] == sizes[59], sizes
    assert sizes[59] <= 3 * stream_bytes_per_object(cfg), (sizes, stream_bytes_per_object(cfg))


def test_bad_stream_inputs(tmp_path):
    _, ours = small_pair()
    frames = [np.zeros((32, 48, 3), np.uint8)] * 3
    with pytest.raises(TypeError, match="mapping"):
        list(ours.track_stream(frames, [(0, 1)]))
    with pytest.raises(ValueError, match="num_frames"):
        list(ours.track_stream(frames, {}, num_frames=0))
    with pytest.raises(ValueError, match="more frames than num_frames=2"):
        list(ours.track_stream(frames, {}, num_frames=2))
    with pytest.raises(ValueError, match=r"\(obj_id, points, labels, box\) or \(obj_id, mask\)"):
        list(ours.track_stream(frames, {0: [(1, None, None)]}))
    prompts: dict = {}
    stream = ours.track_stream(frames, prompts)
    assert next(stream)[1] == []
    prompts[0] = [(1, np.array([[5.0, 5.0]]), np.array([1]), None)]
    with pytest.raises(ValueError, match=r"prompts for frames \[0\] arrived after"):
        next(stream)


@pytest.mark.parametrize("reverse", [False, True])
def test_propagate_without_keeping_outputs(tmp_path, reverse):
    """``propagate_in_video(keep_outputs=False)`` (what ``sam-jax track`` runs) yields the masks of the
    default path, forwards and backwards, with a second prompted frame ahead of the start (a
    conditioning frame in every frame's memory); its state keeps no past masks or prompts, and refuses
    what it can no longer serve."""
    _, ours = small_pair()
    folder, clip, _ = _clip(tmp_path, 20)
    one = np.array([1], np.int32)
    first, second = (19, 8) if reverse else (0, 11)

    def run(keep: bool):
        state = ours.init_state(str(folder), async_loading_frames=not keep)
        ours.add_new_points_or_box(state, first, 1, clip.points[first, :1], one)
        ours.add_new_points_or_box(state, first, 2, None, None, box=clip.boxes[first, 1])
        ours.add_new_points_or_box(state, second, 1, clip.points[second, :1], one)
        start = first
        out = [
            (t, list(ids), m) for t, ids, m in ours.propagate_in_video(state, start, None, reverse, keep_outputs=keep)
        ]
        return state, out

    _, want = run(True)
    state, got = run(False)
    assert len(got) == 20
    err = _max_diff(got, want)
    print(f"keep_outputs=False vs True ({'reverse' if reverse else 'forward'}): max |diff| {err:.3g}")
    assert err <= TOL, err
    for out in state["output_dict_per_obj"].values():
        kept = {**out[COND], **out[NON_COND]}
        assert all(o["pred_masks"] is None for o in kept.values())
        assert len(kept) <= get_config("sam2_test").max_obj_ptrs_in_encoder + 1
    assert not any(state["point_inputs_per_obj"].values())
    with pytest.raises(ValueError, match="without keeping its outputs"):
        ours.add_new_points_or_box(state, 10, 1, clip.points[10, :1], one)
    with pytest.raises(ValueError, match="without keeping its outputs"):
        next(ours.propagate_in_video(state, 0 if reverse else 19, reverse=not reverse))
    ours.reset_state(state)
    ours.add_new_points_or_box(state, 10, 1, clip.points[10, :1], one)  # a fresh start
