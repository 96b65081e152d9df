"""Mamba's selective scan, forward and backward, as two Triton kernels (CUDA, no mamba_ssm).

Without mamba_ssm every MambaMixer runs `runners.models.baselines.selective_scan`, whose torch path
(`_SelectiveScan`) loops over time steps in Python: a handful of small kernels per step and
per layer, forward, recompute and adjoint, so that a training step at the Qwen2.5-0.5B shape
(24 layers, inner width 1792, state 16, batch 8 x 2048) spends seconds launching them. Here
the whole recurrence of one layer is one kernel launch forward and one backward (plus a few
torch reductions of partial sums), after the design of mamba_ssm's selective-scan CUDA
kernel: keep the state on chip, walk the sequence once, keep only a state per chunk of time
for backward and recompute the chunk there. The code is our own, and simpler: no parallel
scan over time inside a chunk; the parallelism is over (batch, channel, state), which at
training shapes is a couple of hundred thousand independent recurrences, about one per
thread of the GPU.

Forward: one program per (sequence, block of BLOCK_D inner channels), one warp by default,
the [BLOCK_D, N] state tile in registers; the layout is written for one channel per thread
(its whole state row, so that y_t = sum_n h C_t stays inside the thread), though the
compiler may spread a channel over a few threads when it knows the strides (then the
reductions take shuffles and a few barriers; how fast either is has yet to be timed on a
GPU). It walks t = 0..T-1:
h = exp(delta_t A) h + delta_t u_t B_t. The state entering every CHUNK steps is stored
([batch, chunks, N, inner] fp32, a few MiB a layer) for backward. Inputs are read
time-contiguous (u, delta [batch, inner, T], B and C as [batch, N, T]; `_prepare` copies
what arrives otherwise): a thread's successive steps then fall in one cache line, so only
one step in 32 (fp32) waits for memory and the rest hit L1, which does the prefetching
that a register pipeline would (and that Triton's pipeliner does not do for a loop without
a matrix product). y and the per-step gradients are written [batch, T, inner], one
coalesced row a step.

Backward: the same grid walks the chunks in reverse. For each chunk it recomputes the
chunk's states from the stored entry state into a per-program scratch buffer in global
memory ([CHUNK + 1, N, BLOCK_D] fp32, small enough to stay in L2), then runs the adjoint
recurrence backwards in registers, G_t = C_t gy_t + exp(delta_{t+1} A) G_{t+1} (dL/dh_t),
carried across chunk boundaries, reading h_{t-1} from the scratch (never the unstable
reverse recurrence h_{t-1} = (h_t - delta_t B_t u_t) / exp(delta_t A)). Per step and
channel it writes du and d(delta); dA accumulates in registers over the program's sequence
and is written per sequence; dB_t and dC_t, sums over the channels (warp shuffles), are
written per block of channels, entry n by the thread of channel n. The per-sequence and
per-block partial sums are added up by torch afterwards, so the result is deterministic
(no atomics). The formulas are `_SelectiveScan._backward`'s.

Precision: all arithmetic in float32 whatever the input dtype (bf16 inputs are widened on
load), as mamba_ssm and the torch path compute it; y is float32; the gradients come back in
the inputs' dtypes. Any state size works (N is padded to a power of two with masks), so does
any inner width and sequence length.

Only imported where Triton is available (CUDA builds of torch); `available()` says so, and
nothing imports triton until a kernel is first needed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from runners.kernels import triton_support

BLOCK_D = 32
"""Inner channels per program (a power of two): with one warp, one channel per thread."""
CHUNK = 64
"""Time steps between stored states: backward recomputes this many from each."""


available = triton_support.available


@functools.cache
def _kernels() -> Any:
    """(forward, backward) Triton kernels, defined on first use (Triton is not imported on
    CPU builds)."""
    import triton
    import triton.language as tl

    @triton.jit
    def scan_forward(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, y_ptr, ck_ptr,
                     T, D, N, n_chunks,
                     su_b, su_d, su_t, sd_b, sd_d, sd_t, sa_d, sa_n, sb_b, sb_t, sb_n,
                     sc_b, sc_t, sc_n, sy_b, sy_t,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        live_d = offs_d < D
        live_n = offs_n < N
        live = live_d[:, None] & live_n[None, :]
        A = tl.load(a_ptr + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n, mask=live,
                    other=0.0).to(tl.float32)
        u_row = u_ptr + pid_b * su_b + offs_d * su_d
        dt_row = dt_ptr + pid_b * sd_b + offs_d * sd_d
        b_row = b_ptr + pid_b * sb_b + offs_n * sb_n
        c_row = c_ptr + pid_b * sc_b + offs_n * sc_n
        y_row = y_ptr + pid_b * sy_b + offs_d
        # stored states: [b, chunks, BLOCK_N, D], channels contiguous
        ck_tile = ck_ptr + pid_b * n_chunks * BLOCK_N * D + offs_n[None, :] * D + \
            offs_d[:, None]
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            tl.store(ck_tile + c * BLOCK_N * D, h, mask=live)
            t0 = c * CHUNK
            t1 = tl.minimum(T, t0 + CHUNK)
            for t in range(t0, t1):
                u = tl.load(u_row + t * su_t, mask=live_d, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * sd_t, mask=live_d, other=0.0).to(tl.float32)
                Bt = tl.load(b_row + t * sb_t, mask=live_n, other=0.0).to(tl.float32)
                Ct = tl.load(c_row + t * sc_t, mask=live_n, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
                tl.store(y_row + t * sy_t, tl.sum(h * Ct[None, :], axis=1), mask=live_d)

    @triton.jit
    def scan_backward(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, gy_ptr, ck_ptr, scr_ptr,
                      gu_ptr, gdt_ptr, ga_ptr, gb_ptr, gc_ptr,
                      T, D, N, n_chunks,
                      su_b, su_d, su_t, sd_b, sd_d, sd_t, sa_d, sa_n, sb_b, sb_t, sb_n,
                      sc_b, sc_t, sc_n, sg_b, sg_d, sg_t, sgu_b, sgu_t, sgd_b, sgd_t,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        n_blocks = tl.num_programs(1)
        program = pid_b * n_blocks + pid_d
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        live_d = offs_d < D
        live_n = offs_n < N
        live = live_d[:, None] & live_n[None, :]
        A = tl.load(a_ptr + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n, mask=live,
                    other=0.0).to(tl.float32)
        u_row = u_ptr + pid_b * su_b + offs_d * su_d
        dt_row = dt_ptr + pid_b * sd_b + offs_d * sd_d
        gy_row = gy_ptr + pid_b * sg_b + offs_d * sg_d
        b_row = b_ptr + pid_b * sb_b + offs_n * sb_n
        c_row = c_ptr + pid_b * sc_b + offs_n * sc_n
        gu_row = gu_ptr + pid_b * sgu_b + offs_d
        gdt_row = gdt_ptr + pid_b * sgd_b + offs_d
        # partial sums over this block's channels: [b, blocks, BLOCK_N, T]. With at least as
        # many channels as states, entry n of a step's sums is stored by the thread of
        # channel n, which picks it out of its registers (every thread holds all of them
        # after the reduction; a plain store would first gather them through shared memory)
        SPREAD: tl.constexpr = BLOCK_N <= BLOCK_D
        lane = tl.arange(0, BLOCK_D)
        pick = lane[:, None] == offs_n[None, :]
        if SPREAD:
            part = program * BLOCK_N * T + lane * T
        else:
            part = program * BLOCK_N * T + offs_n * T
        ck_tile = ck_ptr + pid_b * n_chunks * BLOCK_N * D + offs_n[None, :] * D + \
            offs_d[:, None]
        # this program's scratch [CHUNK + 1, BLOCK_N, BLOCK_D]: slot k holds h_{t0 + k - 1}
        slot: tl.constexpr = BLOCK_N * BLOCK_D
        scr_tile = scr_ptr + program * (CHUNK + 1) * slot + offs_n[None, :] * BLOCK_D + \
            tl.arange(0, BLOCK_D)[:, None]
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # dA_{t+1} G_{t+1}
        gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for i in range(0, n_chunks):
            c = n_chunks - 1 - i
            t0 = c * CHUNK
            t1 = tl.minimum(T, t0 + CHUNK)
            # the chunk's states, recomputed from its stored entry state
            h = tl.load(ck_tile + c * BLOCK_N * D, mask=live, other=0.0)
            tl.store(scr_tile, h)
            for t in range(t0, t1):
                u = tl.load(u_row + t * su_t, mask=live_d, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * sd_t, mask=live_d, other=0.0).to(tl.float32)
                Bt = tl.load(b_row + t * sb_t, mask=live_n, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
                tl.store(scr_tile + (t - t0 + 1) * slot, h)
            tl.debug_barrier()  # what was stored above is read back below
            # the adjoint recurrence, t = t1 - 1 down to t0; h holds h_{t1 - 1}
            for k in range(0, t1 - t0):
                t = t1 - 1 - k
                u = tl.load(u_row + t * su_t, mask=live_d, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * sd_t, mask=live_d, other=0.0).to(tl.float32)
                gy = tl.load(gy_row + t * sg_t, mask=live_d, other=0.0).to(tl.float32)
                Bt = tl.load(b_row + t * sb_t, mask=live_n, other=0.0).to(tl.float32)
                Ct = tl.load(c_row + t * sc_t, mask=live_n, other=0.0).to(tl.float32)
                h_prev = tl.load(scr_tile + (t - t0) * slot)
                dA = tl.exp(dt[:, None] * A)
                G = gy[:, None] * Ct[None, :] + carry  # dL/dh_t
                gdA = G * h_prev * dA  # dL/d(delta_t A)
                gA += gdA * dt[:, None]
                g_dtu = tl.sum(G * Bt[None, :], axis=1)  # dL/d(delta_t u_t)
                tl.store(gu_row + t * sgu_t, (g_dtu * dt).to(gu_ptr.dtype.element_ty),
                         mask=live_d)
                tl.store(gdt_row + t * sgd_t,
                         (tl.sum(gdA * A, axis=1) + g_dtu * u).to(gdt_ptr.dtype.element_ty),
                         mask=live_d)
                g_B = tl.sum(G * (dt * u)[:, None], axis=0)  # [BLOCK_N], every thread
                g_C = tl.sum(gy[:, None] * h, axis=0)
                if SPREAD:  # thread j stores entry j: no exchange between threads
                    g_B = tl.sum(tl.where(pick, g_B[None, :], 0.0), axis=1)
                    g_C = tl.sum(tl.where(pick, g_C[None, :], 0.0), axis=1)
                    tl.store(gb_ptr + part + t, g_B, mask=lane < N)
                    tl.store(gc_ptr + part + t, g_C, mask=lane < N)
                else:
                    tl.store(gb_ptr + part + t, g_B, mask=live_n)
                    tl.store(gc_ptr + part + t, g_C, mask=live_n)
                carry = dA * G
                h = h_prev
            tl.debug_barrier()  # the next chunk's recompute overwrites what was read above
        ga_tile = ga_ptr + pid_b * BLOCK_N * D + offs_n[None, :] * D + offs_d[:, None]
        tl.store(ga_tile, gA, mask=live)

    return scan_forward, scan_backward


def _time_major(x: Tensor) -> Tensor:
    """x [batch, channels, T] with time contiguous (a view when it already is, else one
    copy): one program's loads of successive steps then fall in the same cache lines."""
    return x if x.stride(2) == 1 else x.contiguous()


def _block_n(n: int) -> int:
    return max(2, 1 << (n - 1).bit_length())


def _config(block_d: int | None, num_warps: int | None) -> tuple[int, int]:
    """(BLOCK_D, num_warps): one channel per thread unless told otherwise."""
    if block_d is None:
        block_d = BLOCK_D if num_warps is None else 32 * num_warps
    if num_warps is None:
        num_warps = max(1, min(8, block_d // 32))
    return block_d, num_warps


def _prepare(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The operands in the layouts the kernels read fastest: u and delta time-contiguous,
    A channel-contiguous, B and C time-contiguous ([batch, T, state] views of [batch,
    state, T] tensors). Views where they already are; copies otherwise (B and C are
    small, delta is the one sizeable copy when it arrives channel-major)."""
    def time_contiguous(x: Tensor) -> Tensor:  # [b, T, n] with stride 1 along T
        return x if x.stride(1) == 1 else x.transpose(1, 2).contiguous().transpose(1, 2)

    A = A if A.stride(0) == 1 else A.t().contiguous().t()
    return _time_major(u), _time_major(delta), A, time_contiguous(Bm), time_contiguous(Cm)


def _forward(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, block_d: int,
             chunk: int, num_warps: int) -> tuple[Tensor, Tensor]:
    """(y [b, d, T] fp32, the stored states) of the scan, operands as `_prepare` makes
    them."""
    b, d, T = u.shape
    n = A.shape[1]
    bn = _block_n(n)
    n_chunks = -(-T // chunk)
    y = torch.empty(b, T, d, dtype=torch.float32, device=u.device).transpose(1, 2)
    states = torch.empty(b, n_chunks, bn, d, dtype=torch.float32, device=u.device)
    fwd, _ = _kernels()
    with triton_support.launching_on(u):
        fwd[(b, -(-d // block_d))](
            u, delta, A, Bm, Cm, y, states, T, d, n, n_chunks,
            u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1),
            delta.stride(2), A.stride(0), A.stride(1), Bm.stride(0), Bm.stride(1),
            Bm.stride(2), Cm.stride(0), Cm.stride(1), Cm.stride(2), y.stride(0), y.stride(2),
            BLOCK_D=block_d, BLOCK_N=bn, CHUNK=chunk, num_warps=num_warps)
    return y, states


def _backward(gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
              states: Tensor, block_d: int, chunk: int, num_warps: int,
              dtypes: tuple[torch.dtype, ...]) -> tuple[Tensor, ...]:
    """Gradients of sum(y * gy) for u, delta, A, Bm, Cm, in `dtypes`."""
    b, d, T = u.shape
    n = A.shape[1]
    bn = states.shape[2]
    n_chunks = states.shape[1]
    n_blocks = -(-d // block_d)
    dev = u.device
    gy = _time_major(gy)
    gu = torch.empty(b, T, d, dtype=dtypes[0], device=dev).transpose(1, 2)
    gdelta = torch.empty(b, T, d, dtype=dtypes[1], device=dev).transpose(1, 2)
    gA = torch.empty(b, bn, d, dtype=torch.float32, device=dev)
    gB = torch.empty(b, n_blocks, bn, T, dtype=torch.float32, device=dev)
    gC = torch.empty_like(gB)
    scratch = torch.empty(b * n_blocks * (chunk + 1) * bn * block_d, dtype=torch.float32,
                          device=dev)
    _, bwd = _kernels()
    with triton_support.launching_on(u):
        bwd[(b, n_blocks)](
            u, delta, A, Bm, Cm, gy, states, scratch, gu, gdelta, gA, gB, gC,
            T, d, n, n_chunks,
            u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1),
            delta.stride(2), A.stride(0), A.stride(1), Bm.stride(0), Bm.stride(1),
            Bm.stride(2), Cm.stride(0), Cm.stride(1), Cm.stride(2), gy.stride(0),
            gy.stride(1), gy.stride(2), gu.stride(0), gu.stride(2), gdelta.stride(0),
            gdelta.stride(2), BLOCK_D=block_d, BLOCK_N=bn, CHUNK=chunk, num_warps=num_warps)
    return (gu, gdelta, gA.sum(0)[:n].t().to(dtypes[2]),
            gB.sum(1)[:, :n].transpose(1, 2).to(dtypes[3]),
            gC.sum(1)[:, :n].transpose(1, 2).to(dtypes[4]))


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> None:
    """ValueError unless the operands agree (the kernels index them unchecked)."""
    if u.dim() != 3 or A.dim() != 2:
        raise ValueError(f"u must be [batch, inner, T] and A [inner, state], got "
                         f"{tuple(u.shape)} and {tuple(A.shape)}")
    b, d, T = u.shape
    n = A.shape[1]
    if delta.shape != u.shape or A.shape[0] != d or Bm.shape != (b, T, n) or \
            Cm.shape != (b, T, n) or len({t.device for t in (u, delta, A, Bm, Cm)}) != 1:
        raise ValueError(
            f"selective scan operands disagree: u {tuple(u.shape)}, delta "
            f"{tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(Bm.shape)}, C "
            f"{tuple(Cm.shape)} (want delta like u, A [{d}, n], B and C [{b}, {T}, n], "
            "one device)")


class _ScanTriton(torch.autograd.Function):
    """`runners.models.baselines._SelectiveScan` (same inputs, outputs and fp32 math) on the two
    Triton kernels above."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                block_d: int, chunk: int, num_warps: int) -> Tensor:
        _check_shapes(u, delta, A, Bm, Cm)
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, Bm.dtype, Cm.dtype)
        with torch.autocast(u.device.type, enabled=False):
            operands = _prepare(u, delta, A, Bm, Cm)
            y, states = _forward(*operands, block_d, chunk, num_warps)
        ctx.save_for_backward(*operands, states)
        ctx.config = (block_d, chunk, num_warps)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        *operands, states = ctx.saved_tensors
        with torch.autocast(gy.device.type, enabled=False):
            grads = _backward(gy, *operands, states, *ctx.config, ctx.dtypes)
        return (*grads, None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, *,
                          block_d: int | None = None, chunk: int = CHUNK,
                          num_warps: int | None = None) -> Tensor:
    """y_t = C_t . h_t, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, h_0 = 0, in fp32.

    u, delta [batch, inner, T]; A [inner, state]; Bm, Cm [batch, T, state] -> y [batch,
    inner, T] fp32 (a transposed view of a [batch, T, inner] tensor), differentiable in all
    five, gradients in the inputs' dtypes. `block_d` channels (a power of two) per program
    of `num_warps` warps (default: BLOCK_D channels, one per thread) and `chunk` steps
    between stored states. Any device Triton runs on (CUDA; the CPU only under
    TRITON_INTERPRET=1)."""
    block_d, num_warps = _config(block_d, num_warps)
    if block_d & (block_d - 1) or chunk < 1:
        raise ValueError(f"block_d {block_d} must be a power of two and chunk {chunk} >= 1")
    return _ScanTriton.apply(u, delta, A, Bm, Cm, block_d, chunk, num_warps)
