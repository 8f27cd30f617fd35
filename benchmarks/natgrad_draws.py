"""natgrad's random draws in NumPy, so a PyTorch run can start from the same parameters and take the same
minibatches as `natgrad train --seed S`: Philox4x32-10 (Random123) keyed by the seed, with the counter
(draw, stream) as natgrad's CounterRng (lib/core/random.cpp) forms it; the epoch's Fisher–Yates order
(lib/training/minibatches.cpp) and the fan-in-uniform initialization of linear layers
(lib/model/initialization.cpp), value for value.

    python3 benchmarks/natgrad_draws.py      # prints known-answer values; compare with Random123's

Standard library and NumPy only."""
import numpy as np

_MASK = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
DOMAIN_INIT, DOMAIN_SHUFFLE = 3, 4  # natgrad's RngDomain::init and ::shuffle


def philox4x32(ctr, key):
    """Philox4x32-10 of counter words ctr (4 arrays of uint32 values held as uint64) under key (2 ints)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK for c in ctr)
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0, p1 = _M0 * c0, _M1 * c2  # 32 × 32 bits: exact in 64
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK, \
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK
    return c0, c1, c2, c3


def stream(domain, index):
    return (domain << 56) ^ index


def bits(seed, strm, counters):
    """64 random bits of draws `counters` of stream `strm` (natgrad's CounterRng(seed, strm).bits)."""
    n = np.asarray(counters, dtype=np.uint64)
    r = philox4x32((n & _MASK, n >> np.uint64(32), np.full_like(n, strm & 0xFFFFFFFF),
                    np.full_like(n, (strm >> 32) & 0xFFFFFFFF)), (seed, seed >> 32))
    return (r[0] << np.uint64(32)) | r[1]


def uniform(seed, strm, counters):
    """Uniform in [0, 1) with 53 bits (CounterRng::uniform)."""
    return (bits(seed, strm, counters) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def epoch_order(n, seed, epoch, shuffle=True):
    """The order of n samples in epoch `epoch` (0-based): position i, from n − 1 down to 1, swaps with
    bits(i) mod (i + 1) of stream (shuffle, epoch)."""
    order = np.arange(n)
    if not shuffle or n < 2:
        return order
    i = np.arange(1, n, dtype=np.uint64)
    j = (bits(seed, stream(DOMAIN_SHUFFLE, epoch), i) % (i + np.uint64(1))).astype(np.int64)
    for a in range(n - 1, 0, -1):  # (sequential: each swap sees the previous ones)
        b = j[a - 1]
        order[a], order[b] = order[b], order[a]
    return order


def linear_init(sizes, seed, dtype=np.float32):
    """The parameters natgrad's init_parameters gives a chain of linear layers sizes[0] → … → sizes[-1] (any
    activations between: they hold no parameters): per layer the weight [out, in] row-major, then the bias,
    each entry bound · (2u − 1) with bound = 1/√in and u draw (offset + k) of stream (init, 0)."""
    out, offset = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        count = fan_out * fan_in + fan_out
        u = uniform(seed, stream(DOMAIN_INIT, 0), np.arange(offset, offset + count))
        v = (1.0 / np.sqrt(float(fan_in)) * (2.0 * u - 1.0)).astype(dtype)
        out.append((v[:fan_out * fan_in].reshape(fan_out, fan_in), v[fan_out * fan_in:]))
        offset += count
    return out


if __name__ == "__main__":
    for ctr, key in [((0, 0, 0, 0), (0, 0)),
                     ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF)),
                     ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))]:
        print(" ".join(f"{int(w):08x}" for w in philox4x32(ctr, key)))
