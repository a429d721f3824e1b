/* Helpers shared by the C core's translation units; not part of the API. */
#ifndef PYMSI_INTERNAL_H
#define PYMSI_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "pymsi.h"

#define PYMSI_PAGE_SHIFT 12
#define PYMSI_PAGE_SIZE (1u << PYMSI_PAGE_SHIFT)
#define PYMSI_PAGE_MASK ((uint64_t)PYMSI_PAGE_SIZE - 1)

#if defined(__GNUC__) || defined(__clang__)
#define PYMSI_LIKELY(x) __builtin_expect(!!(x), 1)
#define PYMSI_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PYMSI_PREFETCH(p) __builtin_prefetch(p)
#else
#define PYMSI_LIKELY(x) (x)
#define PYMSI_UNLIKELY(x) (x)
#define PYMSI_PREFETCH(p) ((void)(p))
#endif

/* Fibonacci hashing: the top `bits` bits of key * 2^64/phi. */
static inline uint64_t pymsi_hash(uint64_t key, unsigned bits)
{
    return (key * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits);
}

/*
 * pymsi_hash for keys made of two 32-bit halves, such as index << 32 | dev:
 * each half is multiplied by its own odd constant (dev by 2^64/phi) and the sum's
 * top bits taken.  A single multiply of the whole key lets the high half
 * reach the top bits only through the constant's low 32 bits, so keys that
 * differ only there cluster; here a run in either half (one device's vectors,
 * one vector across devices) is spread as evenly as Fibonacci hashing
 * spreads a run of integers, and the two multiplies run in parallel.
 */
static inline uint64_t pymsi_hash2(uint64_t key, unsigned bits)
{
    uint64_t lo = key & UINT64_C(0xFFFFFFFF), hi = key >> 32;
    return (lo * UINT64_C(0x9E3779B97F4A7C15) + hi * UINT64_C(0x94D049BB133111EB)) >>
           (64 - bits);
}

static inline uint64_t pymsi_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline uint32_t pymsi_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void pymsi_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void pymsi_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The 4 KiB backing page of frame `pfn`, or NULL if never written. */
const uint8_t *pymsi_mem_page(const pymsi_mem *m, uint64_t pfn);

/* pymsi_walk without the configuration check (callers checked it once). */
int pymsi_walk_nocheck(const pymsi_mem *m, const struct pymsi_xlate_cfg *cfg,
                       uint64_t iova, int write, struct pymsi_result *r);

/* pymsi_translate without the configuration check. */
void pymsi_translate_nocheck(const pymsi_mem *m, pymsi_tlb *tlb,
                             const struct pymsi_xlate_cfg *cfg, uint64_t iova,
                             int write, struct pymsi_result *r);

/* Per-item batch status of a translation outcome. */
static inline int32_t pymsi_status_of(const struct pymsi_result *r)
{
    if (!r->fault_kind)
        return 0;
    return PYMSI_STATUS_FAULT | r->fault_kind | r->fault_stage << 4 |
           r->fault_level << 8 | r->s1_table_walk << 12;
}

#endif
