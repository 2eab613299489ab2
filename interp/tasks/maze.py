"""Maze reasoning task: generator, latent encoding, renderer, ground truth and verifier.

A perfect maze of N x N cells is drawn at one pixel per grid cell: (2N+1) x (2N+1) RGB pixels,
cell (r, c) at pixel (2r+1, 2c+1), the pixel between two neighbouring cells is floor when the
passage between them is open. Frame 0 shows the puzzle; frames 1..T-1 show the agent walking
the unique start-to-goal path, leaving a trail; the last frame shows the whole path.

The model works on a compact per-cell latent (one token per cell and frame) with channels
LATENT_CHANNELS in {-1, +1}; ``render`` is the deterministic decoder from latent to pixels,
the testbed's analogue of a video VAE.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Latent channels per cell and frame. "open_*" is +1 when the passage on that side is open.
LATENT_CHANNELS = ("open_n", "open_e", "open_s", "open_w", "start", "goal", "trail", "agent")
OPEN_N, OPEN_E, OPEN_S, OPEN_W, START, GOAL, TRAIL, AGENT = range(len(LATENT_CHANNELS))
DIRECTIONS = ((-1, 0), (0, 1), (1, 0), (0, -1))  # n, e, s, w; index matches the open_* channel

PALETTE = {
    "wall": (0, 0, 0),
    "floor": (255, 255, 255),
    "start": (0, 200, 0),
    "goal": (220, 0, 0),
    "trail": (255, 200, 0),
    "agent": (0, 80, 255),
}
PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[k] for k in PALETTE_NAMES], dtype=np.int32)

MIN_SIZE = 2
MIN_FRAMES = 2


@dataclass(frozen=True)
class Maze:
    """One maze instance; everything else (video, ground truth) is derived from it."""

    size: int
    seed: int
    open_sides: np.ndarray  # (N, N, 4) bool, n/e/s/w
    start: tuple[int, int]
    goal: tuple[int, int]
    path: tuple[tuple[int, int], ...]  # cells from start to goal inclusive
    dist_to_goal: np.ndarray = field(repr=False)  # (N, N) int, tree distance to the goal


def _check_size_frames(size: int, frames: int | None = None) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"maze size must be an integer >= {MIN_SIZE} cells per side, got {size!r}")
    if frames is not None and (not isinstance(frames, (int, np.integer)) or frames < MIN_FRAMES):
        raise ValueError(f"a maze video needs at least {MIN_FRAMES} frames, got {frames!r}")


def _tree_distances(open_sides: np.ndarray, source: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """BFS over open passages: distance from ``source`` and the parent of every cell."""
    n = open_sides.shape[0]
    dist = np.full((n, n), -1, dtype=np.int64)
    parent = np.full((n, n, 2), -1, dtype=np.int64)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for d, (dr, dc) in enumerate(DIRECTIONS):
            if open_sides[r, c, d]:
                nr, nc = r + dr, c + dc
                if dist[nr, nc] < 0:
                    dist[nr, nc] = dist[r, c] + 1
                    parent[nr, nc] = (r, c)
                    queue.append((nr, nc))
    return dist, parent


def generate_maze(size: int, seed: int) -> Maze:
    """A perfect maze (a spanning tree of the grid, by randomised depth-first search).

    The start is a random cell, the goal a random cell at least ``size - 1`` steps away along the
    maze; the same (size, seed) always gives the same maze.
    """
    _check_size_frames(size)
    rng = np.random.default_rng([int(seed), int(size), 0x6D617A65])
    open_sides = np.zeros((size, size, 4), dtype=bool)
    visited = np.zeros((size, size), dtype=bool)
    first = (int(rng.integers(size)), int(rng.integers(size)))
    stack = [first]
    visited[first] = True
    while stack:
        r, c = stack[-1]
        options = [
            d
            for d, (dr, dc) in enumerate(DIRECTIONS)
            if 0 <= r + dr < size and 0 <= c + dc < size and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        d = options[int(rng.integers(len(options)))]
        dr, dc = DIRECTIONS[d]
        open_sides[r, c, d] = True
        open_sides[r + dr, c + dc, (d + 2) % 4] = True
        visited[r + dr, c + dc] = True
        stack.append((r + dr, c + dc))

    start = (int(rng.integers(size)), int(rng.integers(size)))
    # The goal is at least size-1 steps from the start (every cell of an N x N grid has such a
    # cell), so that no maze is solved by a step or two.
    from_start, _ = _tree_distances(open_sides, start)
    far = np.argwhere(from_start >= size - 1)
    goal = tuple(int(v) for v in far[int(rng.integers(len(far)))])
    dist_to_goal, parent = _tree_distances(open_sides, goal)
    # Walking parents from the start toward the goal gives the unique solution path.
    path = [start]
    while path[-1] != goal:
        path.append(tuple(int(v) for v in parent[path[-1]]))
    return Maze(size, int(seed), open_sides, start, goal, tuple(path), dist_to_goal)


def agent_index(frame: int, frames: int, path_len: int) -> int:
    """Index along the path of the agent in ``frame`` (-1: frame 0, no agent yet)."""
    if frame == 0:
        return -1
    return int(np.floor(frame * (path_len - 1) / (frames - 1) + 0.5))


def encode(maze: Maze, frames: int) -> np.ndarray:
    """The target video as a per-cell latent, shape (C, T, N, N), values in {-1, +1}."""
    _check_size_frames(maze.size, frames)
    n = maze.size
    z = np.zeros((len(LATENT_CHANNELS), frames, n, n), dtype=np.float32)
    z[OPEN_N : OPEN_W + 1] = np.moveaxis(maze.open_sides, -1, 0)[:, None]
    z[START, :, maze.start[0], maze.start[1]] = 1
    z[GOAL, :, maze.goal[0], maze.goal[1]] = 1
    for t in range(1, frames):
        k = agent_index(t, frames, len(maze.path))
        for r, c in maze.path[: k + 1]:
            z[TRAIL, t, r, c] = 1
        z[AGENT, t, maze.path[k][0], maze.path[k][1]] = 1
    return z * 2 - 1


def condition(maze: Maze, frames: int) -> np.ndarray:
    """Image-to-video conditioning: the puzzle frame's latent at frame 0, zeros elsewhere, and a
    mask channel (1 on the given frame) in front, as Wan I2V concatenates them. Shape (1+C, T, N, N)."""
    z = encode(maze, frames)
    cond = np.zeros((1 + z.shape[0], frames, maze.size, maze.size), dtype=np.float32)
    cond[0, 0] = 1
    cond[1:, 0] = z[:, 0]
    return cond


def render(latent: np.ndarray) -> np.ndarray:
    """Deterministic decoder: per-cell latent (C, T, N, N), any real values, to RGB (T, 2N+1, 2N+1, 3).

    A channel is on when its value is > 0; a passage is open when the two cells beside it agree
    on average. Priority of colours: agent > trail > start/goal > floor.
    """
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 4 or latent.shape[0] != len(LATENT_CHANNELS) or latent.shape[2] != latent.shape[3]:
        raise ValueError(f"expected a latent of shape ({len(LATENT_CHANNELS)}, T, N, N), got {latent.shape}")
    _, frames, n, _ = latent.shape
    side = 2 * n + 1
    kind = np.zeros((frames, side, side), dtype=np.int64)  # index into PALETTE_NAMES
    wall, floor, start, goal, trail, agent = (PALETTE_NAMES.index(k) for k in PALETTE_NAMES)
    on = latent > 0
    kind[:, 1::2, 1::2] = floor
    # Passages: east neighbour pairs and south neighbour pairs.
    open_e = (latent[OPEN_E, :, :, :-1] + latent[OPEN_W, :, :, 1:]) > 0
    open_s = (latent[OPEN_S, :, :-1, :] + latent[OPEN_N, :, 1:, :]) > 0
    kind[:, 1::2, 2:-1:2] = np.where(open_e, floor, wall)
    kind[:, 2:-1:2, 1::2] = np.where(open_s, floor, wall)
    cells = kind[:, 1::2, 1::2]
    cells[on[START]] = start
    cells[on[GOAL]] = goal
    cells[on[TRAIL]] = trail
    trail_e = open_e & on[TRAIL, :, :, :-1] & on[TRAIL, :, :, 1:]
    trail_s = open_s & on[TRAIL, :, :-1, :] & on[TRAIL, :, 1:, :]
    kind[:, 1::2, 2:-1:2][trail_e] = trail
    kind[:, 2:-1:2, 1::2][trail_s] = trail
    cells[on[AGENT]] = agent
    return _PALETTE_RGB[kind].astype(np.uint8)


def to_grid(video: np.ndarray, size: int) -> np.ndarray:
    """A decoded video (T, H, W, 3) of any size read back onto a maze's (2N+1)^2 grid: the centre pixel
    of each square (away from the blur a model or a VAE leaves at square edges)."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected an RGB video (T, H, W, 3), got shape {video.shape}")
    side = 2 * size + 1
    rows = ((np.arange(side) + 0.5) * video.shape[1] / side).astype(int)
    cols = ((np.arange(side) + 0.5) * video.shape[2] / side).astype(int)
    return video[:, rows][:, :, cols]


def latent_from_frames(video: np.ndarray, size: int) -> np.ndarray:
    """The renderer's inverse: RGB frames of a maze of ``size`` cells (T, H, W, 3) at any pixel size (sampled at
    the centres of the (2N+1)-pixel grid) to the per-cell latent (C, T, N, N) in {-1, +1}, as ``encode`` makes
    it: passages from the walls between cells, start and goal where the puzzle frame shows them (held on every
    frame), trail on every cell the trail or the agent covers, agent where it stands."""
    kind = classify_pixels(to_grid(video, size))  # (T, 2N+1, 2N+1)
    names = {name: PALETTE_NAMES.index(name) for name in PALETTE_NAMES}
    frames = len(video)
    z = np.zeros((len(LATENT_CHANNELS), frames, size, size), dtype=np.float32)
    z[OPEN_E, :, :, :-1] = kind[:, 1::2, 2:-1:2] != names["wall"]
    z[OPEN_W, :, :, 1:] = z[OPEN_E, :, :, :-1]
    z[OPEN_S, :, :-1, :] = kind[:, 2:-1:2, 1::2] != names["wall"]
    z[OPEN_N, :, 1:, :] = z[OPEN_S, :, :-1, :]
    cells = kind[:, 1::2, 1::2]
    z[START] = cells[0] == names["start"]
    z[GOAL] = cells[0] == names["goal"]
    z[TRAIL] = np.isin(cells, [names["trail"], names["agent"]])
    z[AGENT] = cells == names["agent"]
    return z * 2 - 1


def classify_pixels(video: np.ndarray) -> np.ndarray:
    """Nearest palette entry of every pixel of an RGB video (T, H, W, 3) -> (T, H, W) indices."""
    diff = video.astype(np.int32)[..., None, :] - _PALETTE_RGB
    return np.argmin((diff**2).sum(-1), axis=-1)


def path_pixels(maze: Maze) -> list[tuple[int, int]]:
    """Pixels of the solution in walking order: cell, corridor, cell, ... (length 2L-1)."""
    pixels = [(2 * maze.path[0][0] + 1, 2 * maze.path[0][1] + 1)]
    for (r0, c0), (r1, c1) in zip(maze.path, maze.path[1:]):
        pixels.append((r0 + r1 + 1, c0 + c1 + 1))
        pixels.append((2 * r1 + 1, 2 * c1 + 1))
    return pixels


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement of one video."""

    solved: bool  # final_exact and frames_valid
    final_exact: bool  # last frame's trail equals the solution exactly
    frames_valid: bool  # every frame's trail is a prefix of the path, growing, agent at its tip
    path_fraction: float  # share of solution pixels lit in the last frame
    extra_fraction: float  # lit trail pixels off the solution, over the solution's length
    prefix_lengths: tuple[int, ...]  # per frame, cells of the path walked (-1: not a valid prefix)


def verify(video: np.ndarray, maze: Maze) -> Verdict:
    """Rule-based verdict on an RGB video (T, 2N+1, 2N+1, 3) for ``maze``."""
    side = 2 * maze.size + 1
    if video.ndim != 4 or video.shape[1:] != (side, side, 3):
        raise ValueError(f"expected an RGB video of shape (T, {side}, {side}, 3), got {video.shape}")
    kinds = classify_pixels(video)
    trail_k, agent_k = PALETTE_NAMES.index("trail"), PALETTE_NAMES.index("agent")
    lit = (kinds == trail_k) | (kinds == agent_k)
    ordered = path_pixels(maze)
    solution = np.zeros((side, side), dtype=bool)
    for p in ordered:
        solution[p] = True

    prefixes: list[int] = []
    for t in range(video.shape[0]):
        lit_t = lit[t]
        count = int(lit_t.sum())
        if count == 0:
            prefixes.append(0)
            continue
        # A walked prefix of k cells lights exactly the first 2k-1 path pixels.
        k = (count + 1) // 2
        if count % 2 == 0 or 2 * k - 1 > len(ordered):
            prefixes.append(-1)
            continue
        expected = np.zeros_like(lit_t)
        for p in ordered[: 2 * k - 1]:
            expected[p] = True
        tip = ordered[2 * k - 2]
        agent_ok = bool(kinds[t][tip] == agent_k) and int((kinds[t] == agent_k).sum()) == 1
        prefixes.append(k if np.array_equal(lit_t, expected) and agent_ok else -1)

    final = lit[-1]
    final_exact = bool(np.array_equal(final, solution))
    frames_valid = all(k >= 0 for k in prefixes) and all(a <= b for a, b in zip(prefixes, prefixes[1:]))
    return Verdict(
        solved=final_exact and frames_valid,
        final_exact=final_exact,
        frames_valid=frames_valid,
        path_fraction=float((final & solution).sum() / solution.sum()),
        extra_fraction=float((final & ~solution).sum() / solution.sum()),
        prefix_lengths=tuple(prefixes),
    )


def token_truth(maze: Maze, frames: int) -> dict[str, np.ndarray]:
    """Ground truth per latent token, each of shape (T, N, N): what probes are trained against."""
    _check_size_frames(maze.size, frames)
    n = maze.size
    on_path = np.zeros((n, n), dtype=bool)
    for cell in maze.path:
        on_path[cell] = True
    z = encode(maze, frames) > 0
    tile = lambda a: np.broadcast_to(a, (frames, n, n)).copy()  # noqa: E731
    return {
        "open_n": z[OPEN_N],
        "open_e": z[OPEN_E],
        "open_s": z[OPEN_S],
        "open_w": z[OPEN_W],
        "n_walls": tile(4 - maze.open_sides.sum(-1)),
        "start": z[START],
        "goal": z[GOAL],
        "on_path": tile(on_path),
        "dead_end": tile(~on_path),
        "dist_to_goal": tile(maze.dist_to_goal),
        "trail": z[TRAIL],
        "agent": z[AGENT],
    }


def pixel_truth(maze: Maze, frames: int) -> dict[str, np.ndarray]:
    """Ground truth per pixel of the rendered video, each of shape (T, 2N+1, 2N+1)."""
    video = render(encode(maze, frames))
    kinds = classify_pixels(video)
    side = 2 * maze.size + 1
    on_path = np.zeros((side, side), dtype=bool)
    ordered = path_pixels(maze)
    for p in ordered:
        on_path[p] = True
    wall = kinds[0] == PALETTE_NAMES.index("wall")
    # Distance to goal in pixel steps along the maze (floor pixels only; walls are -1).
    dist = np.full((side, side), -1, dtype=np.int64)
    goal_px = (2 * maze.goal[0] + 1, 2 * maze.goal[1] + 1)
    dist[goal_px] = 0
    queue = deque([goal_px])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DIRECTIONS:
            nr, nc = r + dr, c + dc
            if not wall[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    tile = lambda a: np.broadcast_to(a, (frames, side, side)).copy()  # noqa: E731
    return {
        "wall": tile(wall),
        "on_path": tile(on_path),
        "dead_end": tile(~wall & ~on_path),
        "dist_to_goal": tile(dist),
        "trail": (kinds == PALETTE_NAMES.index("trail")) | (kinds == PALETTE_NAMES.index("agent")),
        "agent": kinds == PALETTE_NAMES.index("agent"),
    }


def _with_walls(maze: Maze, open_sides: np.ndarray) -> Maze:
    dist_to_goal, parent = _tree_distances(open_sides, maze.goal)
    path = [maze.start]
    while path[-1] != maze.goal:
        path.append(tuple(int(v) for v in parent[path[-1]]))
    return Maze(maze.size, maze.seed, open_sides, maze.start, maze.goal, tuple(path), dist_to_goal)


def rewire(maze: Maze, seed: int = 0) -> Maze:
    """The smallest edit that keeps a perfect maze and changes its solution: one passage of the
    solution path is walled up and one wall elsewhere is opened to reconnect the two halves.

    (Toggling a single wall of a perfect maze either disconnects it or adds a loop, so a wall
    *swap* is the minimal pair of perfect mazes with different answers.) Same start and goal.
    Raises ValueError when no such edit exists.
    """
    rng = np.random.default_rng([int(seed), int(maze.seed), maze.size, 0x72657769])
    n = maze.size
    cuts = list(range(len(maze.path) - 1))
    rng.shuffle(cuts)
    for i in cuts:
        (r, c), (r2, c2) = maze.path[i], maze.path[i + 1]
        d = DIRECTIONS.index((r2 - r, c2 - c))
        walls = maze.open_sides.copy()
        walls[r, c, d] = walls[r2, c2, (d + 2) % 4] = False
        side_of_start, _ = _tree_distances(walls, maze.start)
        reach = side_of_start >= 0
        # Walls between the start's component and the goal's, other than the one just closed.
        bridges = [
            (a, b, e)
            for a in range(n)
            for b in range(n)
            for e, (da, db) in enumerate(DIRECTIONS)
            if 0 <= a + da < n and 0 <= b + db < n and reach[a, b] and not reach[a + da, b + db]
            and not walls[a, b, e] and ((a, b), (a + da, b + db)) != ((r, c), (r2, c2))
        ]  # fmt: skip
        if bridges:
            a, b, e = bridges[int(rng.integers(len(bridges)))]
            da, db = DIRECTIONS[e]
            walls[a, b, e] = walls[a + da, b + db, (e + 2) % 4] = True
            return _with_walls(maze, walls)
    raise ValueError(f"maze seed {maze.seed} ({n}x{n}) has no wall swap that changes its solution")
