/*
 * The per-(device, MSI index) MSI address table that userspace fills one
 * vector at a time, and the compose step the IOMMU domain's hook performs
 * with it: MSI address = (iova with the low `shift` bits cleared) | (doorbell
 * PA & ((1 << shift) - 1)); shift 0 means no IOMMU translation, the doorbell
 * PA itself (what Linux's msi_msg_set_addr() does).  A vector with no entry
 * is an error (-ENOENT), never a fallback.
 *
 * Open addressing with linear probing and backward-shift deletion over
 * 16-byte slots; only set() and reserve() may allocate.  The MSI index is a
 * u16, as msi_desc->msi_index is in Linux.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

#define SLOT_USED (UINT64_C(1) << 63)
#define SHIFT_POS 54
#define MATCH_MASK (SLOT_USED | UINT64_C(0x0000FFFFFFFFFFFF))

struct slot {
    uint64_t key;   /* USED | shift << 54 | index << 32 | dev */
    uint64_t iova;
};

struct pymsi_msi_table {
    struct slot *slots;
    unsigned bits;
    size_t count;
};

#define MSI_INITIAL_BITS 4

static inline uint64_t ident(uint32_t dev, uint32_t index)
{
    return (uint64_t)index << 32 | dev;
}

pymsi_msi_table *pymsi_msi_new(void)
{
    pymsi_msi_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->bits = MSI_INITIAL_BITS;
    t->slots = calloc((size_t)1 << t->bits, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    return t;
}

void pymsi_msi_free(pymsi_msi_table *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t);
}

static int rehash(pymsi_msi_table *t, unsigned bits)
{
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    struct slot *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    size_t old = (size_t)1 << t->bits;
    for (size_t j = 0; j < old; j++) {
        if (!(t->slots[j].key & SLOT_USED))
            continue;
        size_t i = (size_t)pymsi_hash2(t->slots[j].key & ~SLOT_USED & ~(UINT64_C(0x3F) << SHIFT_POS), bits);
        while (slots[i].key & SLOT_USED)
            i = (i + 1) & mask;
        slots[i] = t->slots[j];
    }
    free(t->slots);
    t->slots = slots;
    t->bits = bits;
    return 0;
}

int pymsi_msi_reserve(pymsi_msi_table *t, size_t n)
{
    if (n > (SIZE_MAX >> 2))
        return -ENOMEM;
    unsigned bits = t->bits;
    while (((size_t)1 << bits) < 2 * n)
        bits++;
    if (bits > 40)
        return -ENOMEM;
    return bits == t->bits ? 0 : rehash(t, bits);
}

/* Slot holding (dev, index), or the empty slot where it would go. */
static inline size_t probe(const pymsi_msi_table *t, uint64_t id)
{
    size_t mask = ((size_t)1 << t->bits) - 1;
    size_t i = (size_t)pymsi_hash2(id, t->bits);
    uint64_t want = SLOT_USED | id;
    for (;;) {
        uint64_t k = t->slots[i].key;
        if (!(k & SLOT_USED) || (k & MATCH_MASK) == want)
            return i;
        i = (i + 1) & mask;
    }
}

int pymsi_msi_set(pymsi_msi_table *t, uint32_t dev, uint32_t index, uint64_t iova,
                  uint32_t shift)
{
    if (index > 0xFFFF || shift > 63)
        return -EINVAL;
    uint64_t id = ident(dev, index);
    size_t i = probe(t, id);
    if (!(t->slots[i].key & SLOT_USED)) {
        if ((t->count + 1) * 2 > ((size_t)1 << t->bits)) {
            int rc = rehash(t, t->bits + 1);
            if (rc)
                return rc;
            i = probe(t, id);
        }
        t->count++;
    }
    t->slots[i].key = SLOT_USED | (uint64_t)shift << SHIFT_POS | id;
    t->slots[i].iova = iova;
    return 0;
}

int pymsi_msi_get(const pymsi_msi_table *t, uint32_t dev, uint32_t index, uint64_t *iova,
                  uint32_t *shift)
{
    if (index > 0xFFFF)
        return -ENOENT;
    size_t i = probe(t, ident(dev, index));
    uint64_t k = t->slots[i].key;
    if (!(k & SLOT_USED))
        return -ENOENT;
    *iova = t->slots[i].iova;
    *shift = (uint32_t)(k >> SHIFT_POS) & 0x3F;
    return 0;
}

int pymsi_msi_remove(pymsi_msi_table *t, uint32_t dev, uint32_t index)
{
    if (index > 0xFFFF)
        return -ENOENT;
    size_t mask = ((size_t)1 << t->bits) - 1;
    size_t i = probe(t, ident(dev, index));
    if (!(t->slots[i].key & SLOT_USED))
        return -ENOENT;
    /* Backward-shift deletion keeps every probe sequence unbroken. */
    size_t j = i;
    for (;;) {
        t->slots[i].key = 0;
        for (;;) {
            j = (j + 1) & mask;
            uint64_t k = t->slots[j].key;
            if (!(k & SLOT_USED)) {
                t->count--;
                return 0;
            }
            size_t home = (size_t)pymsi_hash2(k & (MATCH_MASK & ~SLOT_USED), t->bits);
            /* Move slot j into the hole at i unless its home lies in (i, j]. */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        t->slots[i] = t->slots[j];
        i = j;
    }
}

static inline uint64_t compose_one(uint64_t key, uint64_t iova, uint64_t doorbell_pa)
{
    unsigned shift = (unsigned)(key >> SHIFT_POS) & 0x3F;
    if (!shift)
        return doorbell_pa;
    uint64_t low = (UINT64_C(1) << shift) - 1;
    return (iova & ~low) | (doorbell_pa & low);
}

int pymsi_msi_compose(const pymsi_msi_table *t, uint32_t dev, uint32_t index,
                      uint64_t doorbell_pa, uint64_t *addr)
{
    if (index > 0xFFFF)
        return -ENOENT;
    size_t i = probe(t, ident(dev, index));
    if (!(t->slots[i].key & SLOT_USED))
        return -ENOENT;
    *addr = compose_one(t->slots[i].key, t->slots[i].iova, doorbell_pa);
    return 0;
}

size_t pymsi_msi_count(const pymsi_msi_table *t)
{
    return t->count;
}

size_t pymsi_msi_items(const pymsi_msi_table *t, uint32_t *devs, uint32_t *idx,
                       uint64_t *iova, uint8_t *shift, size_t max)
{
    size_t n = 0, cap = (size_t)1 << t->bits;
    for (size_t i = 0; i < cap && n < max; i++) {
        uint64_t k = t->slots[i].key;
        if (!(k & SLOT_USED))
            continue;
        devs[n] = (uint32_t)k;
        idx[n] = (uint32_t)(k >> 32) & 0xFFFF;
        iova[n] = t->slots[i].iova;
        shift[n] = (uint8_t)((k >> SHIFT_POS) & 0x3F);
        n++;
    }
    return t->count;
}

#define PREFETCH_DISTANCE 8

long pymsi_compose_batch(const pymsi_msi_table *t, uint64_t doorbell_pa,
                         const uint32_t *devs, const uint32_t *idx, size_t n,
                         uint64_t *out_addr, int32_t *status)
{
    long ok = 0;
    for (size_t k = 0; k < n; k++) {
        if (k + PREFETCH_DISTANCE < n && idx[k + PREFETCH_DISTANCE] <= 0xFFFF)
            PYMSI_PREFETCH(&t->slots[pymsi_hash2(ident(devs[k + PREFETCH_DISTANCE],
                                                      idx[k + PREFETCH_DISTANCE]),
                                                t->bits)]);
        if (pymsi_msi_compose(t, devs[k], idx[k], doorbell_pa, &out_addr[k])) {
            out_addr[k] = 0;
            status[k] = -ENOENT;
        } else {
            status[k] = 0;
            ok++;
        }
    }
    return ok;
}
