/*
 * Interrupt delivery helpers: one bit of an LPI pending table in memory, and a
 * batch of LPIs made pending at once.
 *
 * A GICv3 pending table is one bit per INTID in memory.  Setting or clearing a
 * bit is a read-modify-write of its byte through the ordinary memory write (so
 * the page is made on first touch, as a byte write would make it); the old bit
 * is returned so that a caller needs one call, not a read and a write.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

int pymsi_mem_bit(pymsi_mem *m, uint64_t addr, unsigned bit, int op)
{
    if (bit > 7 || op < PYMSI_BIT_READ || op > PYMSI_BIT_CLEAR)
        return -EINVAL;
    if (!pymsi_mem_is_ram(m, addr, 1))
        return -EFAULT;
    const uint8_t *page = pymsi_mem_page(m, addr >> PYMSI_PAGE_SHIFT);
    uint8_t byte = page ? page[addr & PYMSI_PAGE_MASK] : 0;
    uint8_t mask = (uint8_t)(1u << bit);
    int old = (byte & mask) != 0;
    if (op == PYMSI_BIT_READ)
        return old;
    byte = op == PYMSI_BIT_SET ? (uint8_t)(byte | mask) : (uint8_t)(byte & ~mask);
    int rc = pymsi_mem_write(m, addr, &byte, 1);
    return rc < 0 ? rc : old;
}

long pymsi_pending_batch(pymsi_mem *m, const uint64_t *tables, const uint32_t *intids,
                         size_t n, int32_t *old)
{
    long ok = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t intid = intids[i];
        uint64_t addr = tables[i] + (intid >> 3);
        if (addr < tables[i]) {               /* wrapped past 2^64: nothing there */
            old[i] = -EFAULT;
            continue;
        }
        int r = pymsi_mem_bit(m, addr, intid & 7, PYMSI_BIT_SET);
        old[i] = r;
        if (r >= 0)
            ok++;
    }
    return ok;
}

/*
 * The ITS translation cache as batches see it: (DeviceID, EventID) -> (INTID,
 * processor), for physical LPIs whose interrupt translation entry and collection
 * the ITS model has cached.  Open addressing with linear probing; removal shifts
 * the following entries back, so there are no tombstones.  Only set may allocate
 * (growing the table); lookups never do.
 */
struct itc_slot {
    uint64_t key;     /* event << 32 | dev */
    uint32_t intid;
    uint32_t proc;
    uint8_t used;
};

struct pymsi_itc {
    struct itc_slot *slots;
    unsigned bits;
    size_t count;
};

#define ITC_INITIAL_BITS 6

pymsi_itc *pymsi_itc_new(void)
{
    pymsi_itc *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->bits = ITC_INITIAL_BITS;
    t->slots = calloc((size_t)1 << t->bits, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    return t;
}

void pymsi_itc_free(pymsi_itc *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t);
}

static inline uint64_t itc_key(uint32_t dev, uint32_t event)
{
    return (uint64_t)event << 32 | dev;
}

static struct itc_slot *itc_find(const pymsi_itc *t, uint64_t key)
{
    size_t mask = ((size_t)1 << t->bits) - 1;
    size_t i = (size_t)pymsi_hash2(key, t->bits);
    for (;;) {
        struct itc_slot *s = &t->slots[i];
        if (!s->used)
            return NULL;
        if (s->key == key)
            return s;
        i = (i + 1) & mask;
    }
}

static void itc_place(struct itc_slot *slots, unsigned bits, const struct itc_slot *e)
{
    size_t mask = ((size_t)1 << bits) - 1;
    size_t i = (size_t)pymsi_hash2(e->key, bits);
    while (slots[i].used)
        i = (i + 1) & mask;
    slots[i] = *e;
}

static int itc_grow(pymsi_itc *t)
{
    unsigned bits = t->bits + 1;
    if (bits > 40)
        return -ENOMEM;
    struct itc_slot *slots = calloc((size_t)1 << bits, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    size_t cap = (size_t)1 << t->bits;
    for (size_t i = 0; i < cap; i++)
        if (t->slots[i].used)
            itc_place(slots, bits, &t->slots[i]);
    free(t->slots);
    t->slots = slots;
    t->bits = bits;
    return 0;
}

int pymsi_itc_set(pymsi_itc *t, uint32_t dev, uint32_t event, uint32_t intid, uint32_t proc)
{
    uint64_t key = itc_key(dev, event);
    struct itc_slot *s = itc_find(t, key);
    if (s) {
        s->intid = intid;
        s->proc = proc;
        return 0;
    }
    if ((t->count + 1) * 2 > (size_t)1 << t->bits) {
        int rc = itc_grow(t);
        if (rc < 0)
            return rc;
    }
    struct itc_slot e = {key, intid, proc, 1};
    itc_place(t->slots, t->bits, &e);
    t->count++;
    return 0;
}

int pymsi_itc_get(const pymsi_itc *t, uint32_t dev, uint32_t event, uint32_t *intid,
                  uint32_t *proc)
{
    const struct itc_slot *s = itc_find(t, itc_key(dev, event));
    if (!s)
        return -ENOENT;
    *intid = s->intid;
    *proc = s->proc;
    return 0;
}

int pymsi_itc_remove(pymsi_itc *t, uint32_t dev, uint32_t event)
{
    struct itc_slot *s = itc_find(t, itc_key(dev, event));
    if (!s)
        return -ENOENT;
    size_t mask = ((size_t)1 << t->bits) - 1;
    size_t hole = (size_t)(s - t->slots), i = hole;
    for (;;) {                      /* shift back the entries the hole would hide */
        i = (i + 1) & mask;
        struct itc_slot *n = &t->slots[i];
        if (!n->used)
            break;
        size_t home = (size_t)pymsi_hash2(n->key, t->bits);
        /* n may move to the hole if its home is not in (hole, i] (cyclically) */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            t->slots[hole] = *n;
            hole = i;
        }
    }
    memset(&t->slots[hole], 0, sizeof(t->slots[hole]));
    t->count--;
    return 0;
}

void pymsi_itc_clear(pymsi_itc *t)
{
    memset(t->slots, 0, ((size_t)1 << t->bits) * sizeof(*t->slots));
    t->count = 0;
}

size_t pymsi_itc_count(const pymsi_itc *t)
{
    return t->count;
}

long pymsi_itc_lookup_batch(const pymsi_itc *t, uint32_t dev, const uint32_t *events, size_t n,
                            const uint32_t *limits, size_t nproc, uint32_t *intids,
                            int32_t *status, uint32_t *grouped, uint32_t *counts)
{
    long placed = 0;
    for (size_t p = 0; p < nproc; p++)
        counts[p] = 0;
    for (size_t k = 0; k < n; k++) {
        const struct itc_slot *s = itc_find(t, itc_key(dev, events[k]));
        if (!s || s->proc >= nproc || s->intid < PYMSI_LPI_BASE || s->intid >= limits[s->proc]) {
            intids[k] = s ? s->intid : 0;
            status[k] = -ENOENT;
            continue;
        }
        intids[k] = s->intid;
        status[k] = (int32_t)s->proc;
        counts[s->proc]++;
        placed++;
    }
    /* counting sort by processor, item order kept within each */
    size_t off = 0;
    for (size_t p = 0; p < nproc; p++) {
        size_t c = counts[p];
        counts[p] = (uint32_t)off;  /* start, for now */
        off += c;
    }
    for (size_t k = 0; k < n; k++)
        if (status[k] >= 0)
            grouped[counts[status[k]]++] = intids[k];
    /* counts[p] is now the end of p's run: turn it back into a count */
    size_t start = 0;
    for (size_t p = 0; p < nproc; p++) {
        size_t end = counts[p];
        counts[p] = (uint32_t)(end - start);
        start = end;
    }
    return placed;
}

long pymsi_msix_gather(const uint8_t *table, size_t nvec, int masked_all,
                       const uint32_t *vectors, size_t n, uint64_t *addr, uint32_t *data,
                       int32_t *status)
{
    long ok = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t v = vectors[k];
        if (v >= nvec) {
            addr[k] = 0;
            data[k] = 0;
            status[k] = -EINVAL;
            continue;
        }
        const uint8_t *e = table + (size_t)v * PYMSI_MSIX_ENTRY_SIZE;
        addr[k] = pymsi_le64(e + PYMSI_MSIX_ENTRY_ADDR_LO);     /* with ADDR_HI after it */
        data[k] = pymsi_le32(e + PYMSI_MSIX_ENTRY_DATA);
        if (masked_all || (e[PYMSI_MSIX_ENTRY_CTRL] & PYMSI_MSIX_CTRL_MASKBIT)) {
            status[k] = 1;
            continue;
        }
        status[k] = 0;
        ok++;
    }
    return ok;
}

int64_t pymsi_msi_fire(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s,
                       const pymsi_mem *ram, const pymsi_itc *itc, pymsi_mem *gicmem,
                       const uint32_t *limits, const uint64_t *tables, size_t nproc,
                       struct pymsi_result *r, uint32_t sid, uint64_t iova, uint32_t dev,
                       uint32_t event, uint64_t doorbell)
{
    if (pymsi_stream_translate(m, tlb, s, sid, iova, 1, r))
        return PYMSI_FIRE_NONE;
    if (r->fault_kind || r->pa != doorbell || pymsi_mem_is_ram(ram, doorbell, 4))
        return PYMSI_FIRE_TRANSLATED;
    const struct itc_slot *e = itc_find(itc, itc_key(dev, event));
    if (!e || e->proc >= nproc || e->intid < PYMSI_LPI_BASE || e->intid >= limits[e->proc])
        return PYMSI_FIRE_TRANSLATED;
    uint64_t table = tables[e->proc], addr = table + (e->intid >> 3);
    int old = addr < table ? -EFAULT : pymsi_mem_bit(gicmem, addr, e->intid & 7, PYMSI_BIT_SET);
    return (int64_t)e->proc << 34 | (int64_t)e->intid << 2 | (old < 0 ? 2 : old);
}
