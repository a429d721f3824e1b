/*
 * IOTLB: a fixed-capacity cache of completed translations with CLOCK eviction.
 *
 * An entry is tagged by kind (stage 1, stage 2 or nested), ASID (stage-1
 * kinds; global entries match every ASID), VMID, page size and input page.
 * Lookups probe the page sizes present, smallest first.  Like hardware, an
 * entry stays valid until an invalidation removes it, whatever happens to
 * the tables it was walked from.  All storage is allocated when the TLB is
 * made; lookups, inserts and invalidations never allocate.
 *
 * Eviction is CLOCK in its second-chance form: entries queue in insertion
 * order, a hit only sets the entry's reference bit, and a full TLB looks at
 * its oldest entry: referenced, it loses the bit and requeues as newest;
 * otherwise it is evicted.  A hit never relinks anything.
 *
 * Besides the lookup hash, every entry sits on four secondary indexes, each a
 * hashed array of doubly linked lists: by (VMID, input page), by (VMID,
 * IPA page), by VMID and by (VMID, ASID).  An invalidation walks only the
 * lists that can hold what it names, so its cost follows what it removes
 * rather than how much is cached.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

#define GLOBAL_ASID UINT32_C(0x10000)  /* asid_key of global entries */
#define NIL (-1)

enum { IX_VA, IX_IPA, IX_VMID, IX_ASID, NIDX };

struct link {
    int32_t prev, next;
};

struct entry {
    uint64_t va, ipa, pa;  /* page bases */
    uint32_t asid_key;     /* asid, 0 for stage 2 only, GLOBAL_ASID if global */
    uint16_t asid;
    uint16_t vmid;
    uint8_t shift, kind, is_global, granule, level, s2_level;
    uint8_t s1w, s2r, s2w;
    uint8_t ref;           /* CLOCK reference bit: hit since queued */
    int32_t hnext;         /* hash chain */
    int32_t prev, next;    /* CLOCK queue (head = newest) or free list */
    struct link ix[NIDX];  /* secondary indexes */
};

struct pymsi_tlb {
    struct entry *e;
    int32_t *buckets;
    int32_t *ixhead[NIDX];  /* secondary index heads, 1 << bbits each */
    uint32_t *vmid_count;   /* entries on each IX_VMID list */
    unsigned bbits;
    uint32_t capacity;
    uint32_t count;
    uint32_t nglobal;
    int32_t head, tail, free_head;
    uint64_t shift_mask;   /* page sizes that may be present */
    uint64_t hits, misses, inserts, evictions;
};

pymsi_tlb *pymsi_tlb_new(uint32_t capacity)
{
    if (capacity == 0 || capacity > (UINT32_C(1) << 24))
        return NULL;
    pymsi_tlb *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    unsigned bbits = 1;
    while ((UINT32_C(1) << bbits) < 2 * capacity)
        bbits++;
    t->e = calloc(capacity, sizeof(*t->e));
    t->buckets = malloc(((size_t)1 << bbits) * sizeof(*t->buckets));
    int ok = t->e && t->buckets;
    for (int x = 0; x < NIDX; x++) {
        t->ixhead[x] = malloc(((size_t)1 << bbits) * sizeof(int32_t));
        ok = ok && t->ixhead[x];
    }
    t->vmid_count = calloc((size_t)1 << bbits, sizeof(uint32_t));
    if (!ok || !t->vmid_count) {
        pymsi_tlb_free(t);
        return NULL;
    }
    for (int x = 0; x < NIDX; x++)
        for (size_t i = 0; i < ((size_t)1 << bbits); i++)
            t->ixhead[x][i] = NIL;
    t->bbits = bbits;
    t->capacity = capacity;
    for (size_t i = 0; i < ((size_t)1 << bbits); i++)
        t->buckets[i] = NIL;
    for (uint32_t i = 0; i < capacity; i++)
        t->e[i].next = i + 1 < capacity ? (int32_t)(i + 1) : NIL;
    t->free_head = 0;
    t->head = t->tail = NIL;
    return t;
}

void pymsi_tlb_free(pymsi_tlb *t)
{
    if (!t)
        return;
    free(t->e);
    free(t->buckets);
    for (int x = 0; x < NIDX; x++)
        free(t->ixhead[x]);
    free(t->vmid_count);
    free(t);
}

static inline size_t bucket_of(const pymsi_tlb *t, uint8_t kind, uint32_t asid_key,
                               uint16_t vmid, uint8_t shift, uint64_t va)
{
    uint64_t tag = (uint64_t)asid_key | (uint64_t)vmid << 17 | (uint64_t)kind << 33 |
                   (uint64_t)shift << 36;
    return (size_t)pymsi_hash((va >> shift) ^ (tag * UINT64_C(0xD6E8FEB86659FD93)),
                              t->bbits);
}

static inline size_t ix_bucket_of(const pymsi_tlb *t, int x, uint16_t vmid,
                                  uint32_t asid_key, uint8_t shift, uint64_t addr)
{
    uint64_t key;
    switch (x) {
    case IX_VA:
    case IX_IPA:
        key = (addr >> shift) ^ ((uint64_t)vmid << 6 | shift | (uint64_t)x << 22) *
                                    UINT64_C(0xD6E8FEB86659FD93);
        break;
    case IX_VMID:
        key = vmid;
        break;
    default:
        key = (uint64_t)asid_key << 16 | vmid;
        break;
    }
    return (size_t)pymsi_hash(key ^ (key >> 29), t->bbits);
}

static inline size_t ix_bucket(const pymsi_tlb *t, int x, const struct entry *e)
{
    return ix_bucket_of(t, x, e->vmid, e->asid_key, e->shift, x == IX_IPA ? e->ipa : e->va);
}

static void ix_link(pymsi_tlb *t, int32_t i)
{
    struct entry *e = &t->e[i];
    for (int x = 0; x < NIDX; x++) {
        size_t b = ix_bucket(t, x, e);
        int32_t h = t->ixhead[x][b];
        e->ix[x].prev = NIL;
        e->ix[x].next = h;
        if (h != NIL)
            t->e[h].ix[x].prev = i;
        t->ixhead[x][b] = i;
        if (x == IX_VMID)
            t->vmid_count[b]++;
    }
}

static void ix_unlink(pymsi_tlb *t, int32_t i)
{
    struct entry *e = &t->e[i];
    for (int x = 0; x < NIDX; x++) {
        size_t b = ix_bucket(t, x, e);
        if (e->ix[x].prev != NIL)
            t->e[e->ix[x].prev].ix[x].next = e->ix[x].next;
        else
            t->ixhead[x][b] = e->ix[x].next;
        if (e->ix[x].next != NIL)
            t->e[e->ix[x].next].ix[x].prev = e->ix[x].prev;
        if (x == IX_VMID)
            t->vmid_count[b]--;
    }
}

static int32_t find(const pymsi_tlb *t, uint8_t kind, uint32_t asid_key, uint16_t vmid,
                    uint8_t shift, uint64_t va)
{
    uint64_t base = va & ~((UINT64_C(1) << shift) - 1);
    for (int32_t i = t->buckets[bucket_of(t, kind, asid_key, vmid, shift, va)]; i != NIL;
         i = t->e[i].hnext) {
        const struct entry *e = &t->e[i];
        if (e->va == base && e->shift == shift && e->kind == kind &&
            e->asid_key == asid_key && e->vmid == vmid)
            return i;
    }
    return NIL;
}

static void lru_unlink(pymsi_tlb *t, int32_t i)
{
    struct entry *e = &t->e[i];
    if (e->prev != NIL)
        t->e[e->prev].next = e->next;
    else
        t->head = e->next;
    if (e->next != NIL)
        t->e[e->next].prev = e->prev;
    else
        t->tail = e->prev;
}

static void lru_push_front(pymsi_tlb *t, int32_t i)
{
    struct entry *e = &t->e[i];
    e->prev = NIL;
    e->next = t->head;
    if (t->head != NIL)
        t->e[t->head].prev = i;
    else
        t->tail = i;
    t->head = i;
}

static void hash_unlink(pymsi_tlb *t, int32_t i)
{
    const struct entry *e = &t->e[i];
    int32_t *link = &t->buckets[bucket_of(t, e->kind, e->asid_key, e->vmid, e->shift, e->va)];
    while (*link != i)
        link = &t->e[*link].hnext;
    *link = e->hnext;
}

static void remove_entry(pymsi_tlb *t, int32_t i)
{
    hash_unlink(t, i);
    ix_unlink(t, i);
    lru_unlink(t, i);
    if (t->e[i].is_global)
        t->nglobal--;
    t->e[i].next = t->free_head;
    t->free_head = i;
    if (--t->count == 0)
        t->shift_mask = 0;
}

static uint8_t kind_of(const struct pymsi_xlate_cfg *cfg)
{
    if (cfg->has_s1)
        return cfg->has_s2 ? PYMSI_KIND_S12 : PYMSI_KIND_S1;
    return PYMSI_KIND_S2;
}

/* The address the TLB is indexed by: the input with an ignored top byte made canonical. */
static uint64_t tlb_va(const struct pymsi_xlate_cfg *cfg, uint64_t iova)
{
    if (!cfg->has_s1)
        return iova;
    unsigned n = (unsigned)(iova >> 55) & 1;
    if (!cfg->s1.tt[n].tbi)
        return iova;
    return n ? iova | UINT64_C(0xFF00000000000000) : iova & UINT64_C(0x00FFFFFFFFFFFFFF);
}

static int32_t lookup(const pymsi_tlb *t, uint8_t kind, uint16_t asid, uint16_t vmid,
                      uint64_t va)
{
    uint32_t asid_key = kind == PYMSI_KIND_S2 ? 0 : asid;
    uint64_t mask = t->shift_mask;
    while (mask) {
        unsigned shift = 0;
        while (!(mask & (UINT64_C(1) << shift)))
            shift++;
        mask &= mask - 1;
        int32_t i = find(t, kind, asid_key, vmid, (uint8_t)shift, va);
        if (i == NIL && t->nglobal && kind != PYMSI_KIND_S2)
            i = find(t, kind, GLOBAL_ASID, vmid, (uint8_t)shift, va);
        if (i != NIL)
            return i;
    }
    return NIL;
}

static void insert(pymsi_tlb *t, const struct pymsi_xlate_cfg *cfg, uint8_t kind,
                   uint64_t va, const struct pymsi_result *r)
{
    int32_t i = t->free_head;
    if (i == NIL) {
        /* The CLOCK hand: referenced entries get a second chance. */
        for (i = t->tail; t->e[i].ref; i = t->tail) {
            t->e[i].ref = 0;
            lru_unlink(t, i);
            lru_push_front(t, i);
        }
        remove_entry(t, i);
        t->evictions++;
    }
    t->free_head = t->e[i].next;

    struct entry *e = &t->e[i];
    unsigned shift = 0;
    while ((UINT64_C(1) << shift) < r->page_size)
        shift++;
    uint64_t mask = r->page_size - 1;
    e->va = va & ~mask;
    e->ipa = r->ipa & ~mask;
    e->pa = r->pa & ~mask;
    e->shift = (uint8_t)shift;
    e->kind = kind;
    e->is_global = kind != PYMSI_KIND_S2 && r->is_global;
    e->asid = kind == PYMSI_KIND_S2 ? 0 : cfg->asid;
    e->asid_key = e->is_global ? GLOBAL_ASID : e->asid;
    e->vmid = cfg->vmid;
    e->granule = cfg->has_s1 ? cfg->s1.tt[(va >> 55) & 1].gshift : cfg->s2.gshift;
    e->level = r->level;
    e->s2_level = r->s2_level;
    e->s1w = r->s1_writable;
    e->s2r = r->readable;
    e->s2w = r->s2_writable;
    e->ref = 0;
    size_t b = bucket_of(t, e->kind, e->asid_key, e->vmid, e->shift, e->va);
    e->hnext = t->buckets[b];
    t->buckets[b] = i;
    ix_link(t, i);
    lru_push_front(t, i);
    if (e->is_global)
        t->nglobal++;
    t->count++;
    t->shift_mask |= UINT64_C(1) << shift;
    t->inserts++;
}

static void fault_from_entry(struct pymsi_result *r, int stage, int level, uint64_t ipa)
{
    r->fault_kind = PYMSI_FAULT_PERMISSION;
    r->fault_stage = (uint8_t)stage;
    r->fault_level = (uint8_t)level;
    r->fault_ipa = stage == 2 ? ipa : 0;
}

void pymsi_translate_nocheck(const pymsi_mem *m, pymsi_tlb *t,
                             const struct pymsi_xlate_cfg *cfg, uint64_t iova,
                             int write, struct pymsi_result *r)
{
    if (!t) {
        pymsi_walk_nocheck(m, cfg, iova, write, r);
        return;
    }
    uint8_t kind = kind_of(cfg);
    uint64_t va = tlb_va(cfg, iova);
    int32_t i = lookup(t, kind, cfg->asid, cfg->vmid, va);
    if (i != NIL) {
        t->hits++;
        struct entry *e = &t->e[i];
        if (!e->ref)
            e->ref = 1;
        uint64_t off = va & ((UINT64_C(1) << e->shift) - 1);
        memset(r, 0, sizeof(*r));
        r->tlb_hit = 1;
        if (write && !e->s1w) {
            fault_from_entry(r, 1, e->level, 0);
            return;
        }
        if (write ? !e->s2w : !e->s2r) {
            fault_from_entry(r, 2, e->s2_level, e->ipa + off);
            return;
        }
        r->pa = e->pa + off;
        r->ipa = e->ipa + off;
        r->page_size = UINT64_C(1) << e->shift;
        r->writable = e->s1w && e->s2w;
        r->readable = e->s2r;
        r->s1_writable = e->s1w;
        r->s2_writable = e->s2w;
        r->level = e->level;
        r->s2_level = e->s2_level;
        r->is_global = e->is_global;
        return;
    }
    t->misses++;
    pymsi_walk_nocheck(m, cfg, iova, write, r);
    if (!r->fault_kind)
        insert(t, cfg, kind, va, r);
}

int pymsi_translate(const pymsi_mem *m, pymsi_tlb *tlb, const struct pymsi_xlate_cfg *cfg,
                    uint64_t iova, int write, struct pymsi_result *r)
{
    int rc = pymsi_cfg_check(cfg);
    if (rc)
        return rc;
    pymsi_translate_nocheck(m, tlb, cfg, iova, write, r);
    return 0;
}

static int tlbi_match(const struct entry *e, const struct pymsi_tlbi *s)
{
    if (!(s->kinds & (1u << e->kind)))
        return 0;
    if (s->match_vmid && e->vmid != s->vmid)
        return 0;
    if (s->match_asid) {
        if (e->is_global ? !s->asid_hits_global : e->asid != s->asid)
            return 0;
    }
    if (s->range != PYMSI_TLBI_RANGE_NONE) {
        uint64_t base = s->range == PYMSI_TLBI_RANGE_IPA ? e->ipa : e->va;
        uint64_t last = base + ((UINT64_C(1) << e->shift) - 1);
        if (last < s->start || base > s->last)
            return 0;
    }
    return 1;
}

/* Remove the matching entries of secondary list `x` from `i` on. */
static int invalidate_list(pymsi_tlb *t, int x, int32_t i, const struct pymsi_tlbi *spec)
{
    int n = 0;
    while (i != NIL) {
        int32_t next = t->e[i].ix[x].next;
        if (tlbi_match(&t->e[i], spec)) {
            remove_entry(t, i);
            n++;
        }
        i = next;
    }
    return n;
}

/*
 * Pages of every size present that a range covers, or UINT64_MAX past
 * `limit`: probing them costs about as much as walking `limit` entries.
 */
static uint64_t range_pages(const pymsi_tlb *t, const struct pymsi_tlbi *s, uint64_t limit)
{
    uint64_t total = 0;
    for (unsigned sh = 0; sh < 64; sh++) {
        if (!(t->shift_mask & (UINT64_C(1) << sh)))
            continue;
        uint64_t pages = (s->last >> sh) - (s->start >> sh);
        if (pages >= limit || (total += pages + 1) > limit)
            return UINT64_MAX;
    }
    return total;
}

int pymsi_tlb_invalidate(pymsi_tlb *t, const struct pymsi_tlbi *spec)
{
    if (spec->range > PYMSI_TLBI_RANGE_IPA || spec->start > spec->last)
        return -EINVAL;
    int n = 0;
    if (!spec->match_vmid || !t->count) {
        for (int32_t i = t->head; i != NIL;) {
            int32_t next = t->e[i].next;
            if (tlbi_match(&t->e[i], spec)) {
                remove_entry(t, i);
                n++;
            }
            i = next;
        }
        return n;
    }
    size_t vb = ix_bucket_of(t, IX_VMID, spec->vmid, 0, 0, 0);
    if (spec->range != PYMSI_TLBI_RANGE_NONE &&
        range_pages(t, spec, t->vmid_count[vb]) != UINT64_MAX) {
        /* Probe each page of each size present that the range covers. */
        int x = spec->range == PYMSI_TLBI_RANGE_IPA ? IX_IPA : IX_VA;
        uint64_t mask = t->shift_mask;
        for (unsigned sh = 0; sh < 64; sh++) {
            if (!(mask & (UINT64_C(1) << sh)))
                continue;
            for (uint64_t p = spec->start >> sh;; p++) {
                size_t b = ix_bucket_of(t, x, spec->vmid, 0, (uint8_t)sh, p << sh);
                n += invalidate_list(t, x, t->ixhead[x][b], spec);
                if (p == spec->last >> sh)
                    break;
            }
        }
        return n;
    }
    if (spec->match_asid && !spec->asid_hits_global && spec->range == PYMSI_TLBI_RANGE_NONE) {
        size_t b = ix_bucket_of(t, IX_ASID, spec->vmid, spec->asid, 0, 0);
        return invalidate_list(t, IX_ASID, t->ixhead[IX_ASID][b], spec);
    }
    return invalidate_list(t, IX_VMID, t->ixhead[IX_VMID][vb], spec);
}

void pymsi_tlb_get_stats(const pymsi_tlb *t, struct pymsi_tlb_stats *out)
{
    out->hits = t->hits;
    out->misses = t->misses;
    out->inserts = t->inserts;
    out->evictions = t->evictions;
    out->count = t->count;
    out->capacity = t->capacity;
}

void pymsi_tlb_reset_stats(pymsi_tlb *t)
{
    t->hits = t->misses = t->inserts = t->evictions = 0;
}

size_t pymsi_tlb_entries(const pymsi_tlb *t, struct pymsi_tlb_entry_info *out, size_t max)
{
    size_t n = 0;
    for (int32_t i = t->head; i != NIL && n < max; i = t->e[i].next, n++) {
        const struct entry *e = &t->e[i];
        struct pymsi_tlb_entry_info *o = &out[n];
        o->iova = e->va;
        o->ipa = e->ipa;
        o->pa = e->pa;
        o->shift = e->shift;
        o->kind = e->kind;
        o->is_global = e->is_global;
        o->granule = e->granule;
        o->level = e->level;
        o->s2_level = e->s2_level;
        o->s1_writable = e->s1w;
        o->s2_readable = e->s2r;
        o->s2_writable = e->s2w;
        o->asid = e->asid;
        o->vmid = e->vmid;
    }
    return t->count;
}
