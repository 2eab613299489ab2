import numpy as np
import pytest

from interp.tasks import maze as M
from interp.tasks.splits import TRAIN_SEED_START, held_out_seeds, is_training_seed, validation_seeds
from interp.training import TrainConfig, training_batch


def _edges(maze):
    return int(maze.open_sides.sum()) // 2


@pytest.mark.parametrize("size", [2, 4, 5, 6])
def test_maze_is_a_spanning_tree_with_one_solution(size):
    for seed in range(30):
        m = M.generate_maze(size, seed)
        # A connected graph on N^2 cells with N^2 - 1 edges is a tree: exactly one path between two cells.
        assert _edges(m) == size * size - 1
        assert (m.dist_to_goal >= 0).all()
        assert m.path[0] == m.start and m.path[-1] == m.goal
        assert len(set(m.path)) == len(m.path)
        for (r0, c0), (r1, c1) in zip(m.path, m.path[1:]):
            d = M.DIRECTIONS.index((r1 - r0, c1 - c0))
            assert m.open_sides[r0, c0, d]
        # Along the path, the distance to the goal falls by one per step: the path is the shortest one.
        assert [int(m.dist_to_goal[c]) for c in m.path] == list(range(len(m.path) - 1, -1, -1))
        assert len(m.path) >= size  # the goal is at least size - 1 steps away


def test_same_seed_same_video_other_seed_other_video():
    a, b, c = M.generate_maze(4, 11), M.generate_maze(4, 11), M.generate_maze(4, 12)
    assert np.array_equal(M.render(M.encode(a, 4)), M.render(M.encode(b, 4)))
    assert not np.array_equal(M.render(M.encode(a, 4)), M.render(M.encode(c, 4)))


def test_rendering_and_ground_truth_agree():
    for seed in range(20):
        m = M.generate_maze(4, seed)
        frames = 5
        video = M.render(M.encode(m, frames))
        assert video.shape == (frames, 9, 9, 3)
        kinds = M.classify_pixels(video)
        px = M.pixel_truth(m, frames)
        assert np.array_equal(px["wall"][0], kinds[0] == M.PALETTE_NAMES.index("wall"))
        assert not px["trail"][0].any()  # frame 0 is the puzzle
        assert np.array_equal(px["trail"][-1], px["on_path"][-1])  # the last frame shows the whole path
        assert px["agent"][-1][2 * m.goal[0] + 1, 2 * m.goal[1] + 1]
        tok = M.token_truth(m, frames)
        assert tok["on_path"].shape == (frames, 4, 4)
        for r in range(4):
            for c in range(4):
                assert tok["on_path"][0, r, c] == px["on_path"][0, 2 * r + 1, 2 * c + 1]
                assert tok["dead_end"][0, r, c] == px["dead_end"][0, 2 * r + 1, 2 * c + 1]
                assert tok["trail"][-1, r, c] == px["trail"][-1, 2 * r + 1, 2 * c + 1]
                # open east side <=> the pixel to the right of the cell is not a wall
                assert tok["open_e"][0, r, c] == (not px["wall"][0, 2 * r + 1, 2 * c + 2])
        assert (tok["dist_to_goal"][0][tok["on_path"][0]] >= 0).all()
        # The trail grows along the path frame by frame.
        walked = tok["trail"].sum(axis=(1, 2))
        assert walked[0] == 0 and (np.diff(walked) >= 0).all() and walked[-1] == len(m.path)


def test_verifier_accepts_truth_and_rejects_planted_errors():
    m = M.generate_maze(4, 0)
    assert len(m.path) < 16  # some cell lies off the path
    z = M.encode(m, 4)
    assert M.verify(M.render(z), m).solved

    # A wrong path: one dead-end cell beside the path lit in the last frame.
    tok = M.token_truth(m, 4)
    off = np.argwhere(tok["dead_end"][0])
    wrong = z.copy()
    wrong[M.TRAIL, -1, off[0][0], off[0][1]] = 1
    v = M.verify(M.render(wrong), m)
    assert not v.solved and not v.final_exact and v.extra_fraction > 0

    # A missing path cell in the middle of the last frame.
    gap = z.copy()
    mid = m.path[len(m.path) // 2]
    gap[M.TRAIL, -1, mid[0], mid[1]] = -1
    assert not M.verify(M.render(gap), m).solved

    # Right final frame but an intermediate frame whose trail shrinks back: frames are not valid.
    shrink = z.copy()
    shrink[:, 1] = z[:, 2]
    shrink[:, 2] = z[:, 1]
    v = M.verify(M.render(shrink), m)
    if not np.array_equal(z[:, 1], z[:, 2]):
        assert v.final_exact and not v.frames_valid and not v.solved

    # A copy of the puzzle frame (no trail at all) is not a solution.
    copy = np.repeat(z[:, :1], 4, axis=1)
    assert not M.verify(M.render(copy), m).solved


def test_impossible_specs_raise():
    with pytest.raises(ValueError, match="size"):
        M.generate_maze(1, 0)
    with pytest.raises(ValueError, match="frames"):
        M.encode(M.generate_maze(4, 0), 0)
    with pytest.raises(ValueError, match="RGB video"):
        M.verify(np.zeros((4, 5, 5, 3), np.uint8), M.generate_maze(4, 0))


def test_splits_are_disjoint_from_training():
    assert not any(is_training_seed(s) for s in held_out_seeds(1000) + validation_seeds(1000))
    assert set(held_out_seeds(500)).isdisjoint(validation_seeds(500))
    cfg = TrainConfig(batch_size=4)
    x0, cond = training_batch(cfg, 0)
    assert x0.shape == (4, 8, 4, 4, 4) and cond.shape == (4, 9, 4, 4, 4)
    # The training mazes are exactly those of training seeds.
    assert np.array_equal(x0[0].numpy(), M.encode(M.generate_maze(4, TRAIN_SEED_START), 4))
