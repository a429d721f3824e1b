/*
 * VMSAv8-64 translation table walks as an SMMUv3 performs them: stage 1
 * (TTB0/TTB1, TBI, EPD, APTable/HAD, AP, AF/AFFD, IPS), stage 2 (S2T0SZ,
 * S2SL0 with concatenated start-level tables, S2AP, AF/S2AFFD, S2PS) and
 * nested (every stage-1 table address is an IPA that stage 2 translates).
 *
 * Within one stage the fault priority is translation, address size, access
 * flag, permission.  A walk reads at most 4 descriptors per stage and every
 * address it reads is checked by the memory model, so no table contents can
 * make it loop or read outside RAM (that is an external abort).
 */
#include <errno.h>

#include "internal.h"

/* Descriptor fields: formats.h, generated from pymsi/core/vmsa_formats.py. */
#define DESC(d, name) PYMSI_GET(d, DESC_##name)

struct leaf {
    uint64_t oa;      /* output address of the page/block */
    uint8_t shift;    /* log2 of its size */
    uint8_t level;
    uint8_t r, w;
    uint8_t global;
};

static inline uint64_t oa_mask(unsigned gshift)
{
    return (PYMSI_DESC_OA_MASK << PYMSI_DESC_OA_SHIFT) & ~((UINT64_C(1) << gshift) - 1);
}

/* Block descriptors are only valid at these levels without 52-bit addressing. */
static inline int block_allowed(unsigned gshift, unsigned level)
{
    return gshift == 12 ? (level == 1 || level == 2) : level == 2;
}

static inline int fault(struct pymsi_result *r, int kind, int stage, int level,
                        uint64_t ipa)
{
    r->fault_kind = (uint8_t)kind;
    r->fault_stage = (uint8_t)stage;
    r->fault_level = (uint8_t)level;
    r->fault_ipa = stage == 2 ? ipa : 0;
    return -1;
}

static inline unsigned level_lsb(unsigned gshift, unsigned level)
{
    return gshift + (gshift - 3) * (3 - level);
}

/* What a descriptor read at `level` is, beyond the PYMSI_FAULT_* kinds. */
#define DESC_IS_TABLE 16
#define DESC_IS_LEAF 17

/*
 * Decode descriptor `d` read at `level` of a walk with granule `g`: a table
 * (DESC_IS_TABLE, next-level table address in *addr), a block or page
 * (DESC_IS_LEAF, output address in *addr), or the fault it causes
 * (translation for invalid or misplaced descriptors, address size for an
 * address beyond `oas` bits).  Permissions and the access flag are the
 * caller's, as they differ between the stages.
 */
static inline int decode(uint64_t d, unsigned g, unsigned level, unsigned lsb, unsigned oas,
                         uint64_t *addr)
{
    if (!DESC(d, VALID))
        return PYMSI_FAULT_TRANSLATION;
    int table = DESC(d, TABLE) && level < 3;
    if (!DESC(d, TABLE) && (level == 3 || !block_allowed(g, level)))
        return PYMSI_FAULT_TRANSLATION;
    *addr = d & oa_mask(g);
    if (!table)
        *addr &= ~((UINT64_C(1) << lsb) - 1);
    if (*addr >> oas)
        return PYMSI_FAULT_ADDRESS_SIZE;
    return table ? DESC_IS_TABLE : DESC_IS_LEAF;
}

/* Base of the start-level table(s): `ttb` aligned to their size, 64 bytes at least. */
static inline uint64_t start_table(uint64_t ttb, unsigned width)
{
    uint64_t align = UINT64_C(8) << width;
    return ttb & ~((align < 64 ? 64 : align) - 1);
}

static int granule_ok(unsigned gshift)
{
    return gshift == 12 || gshift == 14 || gshift == 16;
}

static int size_ok(unsigned bits)
{
    return bits == 32 || bits == 36 || bits == 40 || bits == 42 || bits == 44 ||
           bits == 48;
}

int pymsi_cfg_check(const struct pymsi_xlate_cfg *cfg)
{
    if (!cfg->has_s1 && !cfg->has_s2)
        return -EINVAL;
    if (cfg->has_s1) {
        if (!size_ok(cfg->s1.ips))
            return -EINVAL;
        for (int n = 0; n < 2; n++) {
            const struct pymsi_s1_tt *tt = &cfg->s1.tt[n];
            if (!tt->enabled)
                continue;
            if (!granule_ok(tt->gshift) || tt->tsz < 16 || tt->tsz > 39)
                return -EINVAL;
            unsigned stride = tt->gshift - 3u, ia = 64u - tt->tsz;
            unsigned levels = (ia - tt->gshift + stride - 1) / stride;
            if (tt->start_level != 4 - levels)
                return -EINVAL;
        }
    }
    if (cfg->has_s2) {
        const struct pymsi_s2_cfg *c = &cfg->s2;
        if (!granule_ok(c->gshift) || c->tsz < 16 || c->tsz > 39 ||
            c->start_level > 3 || !size_ok(c->ps))
            return -EINVAL;
        unsigned ia = 64u - c->tsz, lsb = level_lsb(c->gshift, c->start_level);
        if (ia <= lsb || ia - lsb > c->gshift - 3u + 4u)
            return -EINVAL;
    }
    return 0;
}

static int s2_walk(const pymsi_mem *m, const struct pymsi_s2_cfg *c, uint64_t ipa,
                   int write, struct leaf *o, struct pymsi_result *r)
{
    unsigned g = c->gshift, stride = g - 3, level = c->start_level;
    unsigned ia = 64u - c->tsz;

    if (ipa >> ia)
        return fault(r, PYMSI_FAULT_TRANSLATION, 2, 0, ipa);
    if (c->vttb >> c->ps)
        return fault(r, PYMSI_FAULT_ADDRESS_SIZE, 2, 0, ipa);

    unsigned lsb = level_lsb(g, level);
    unsigned width = ia - lsb;  /* > stride: concatenated tables */
    uint64_t table = start_table(c->vttb, width);

    for (;;) {
        uint64_t idx = (ipa >> lsb) & ((UINT64_C(1) << width) - 1);
        uint64_t d, addr;
        if (pymsi_mem_read_u64(m, table + idx * 8, &d))
            return fault(r, PYMSI_FAULT_EXTERNAL_ABORT, 2, (int)level, ipa);
        int kind = decode(d, g, level, lsb, c->ps, &addr);
        if (kind == DESC_IS_TABLE) {
            table = addr;
            level++;
            lsb -= stride;
            width = stride;
            continue;
        }
        if (kind != DESC_IS_LEAF)
            return fault(r, kind, 2, (int)level, ipa);
        if (!DESC(d, AF) && !c->affd)
            return fault(r, PYMSI_FAULT_ACCESS, 2, (int)level, ipa);
        o->r = DESC(d, S2AP_R) != 0;
        o->w = DESC(d, S2AP_W) != 0;
        if (write ? !o->w : !o->r)
            return fault(r, PYMSI_FAULT_PERMISSION, 2, (int)level, ipa);
        o->oa = addr;
        o->shift = (uint8_t)lsb;
        o->level = (uint8_t)level;
        o->global = 0;
        return 0;
    }
}

static int s1_walk(const pymsi_mem *m, const struct pymsi_xlate_cfg *cfg, uint64_t va,
                   int write, struct leaf *o, struct pymsi_result *r)
{
    const struct pymsi_s1_cfg *c = &cfg->s1;
    unsigned n = (unsigned)(va >> 55) & 1;
    const struct pymsi_s1_tt *tt = &c->tt[n];

    if (!tt->enabled)
        return fault(r, PYMSI_FAULT_TRANSLATION, 1, 0, 0);
    unsigned g = tt->gshift, stride = g - 3, ia = 64u - tt->tsz;
    unsigned top = tt->tbi ? 56 : 64;
    uint64_t ones = (UINT64_C(1) << (top - ia)) - 1;
    if (((va >> ia) & ones) != (n ? ones : 0))
        return fault(r, PYMSI_FAULT_TRANSLATION, 1, 0, 0);
    if (tt->ttb >> c->ips)
        return fault(r, PYMSI_FAULT_ADDRESS_SIZE, 1, 0, 0);

    unsigned level = tt->start_level, lsb = level_lsb(g, level), width = ia - lsb;
    uint64_t table = start_table(tt->ttb, width);
    int read_only = 0;

    for (;;) {
        uint64_t idx = (va >> lsb) & ((UINT64_C(1) << width) - 1);
        uint64_t daddr = table + idx * 8, d, addr;
        if (cfg->has_s2) {
            struct leaf l2;
            if (s2_walk(m, &cfg->s2, daddr, 0, &l2, r)) {
                r->s1_table_walk = 1;
                return -1;
            }
            daddr = l2.oa | (daddr & ((UINT64_C(1) << l2.shift) - 1));
        }
        if (pymsi_mem_read_u64(m, daddr, &d))
            return fault(r, PYMSI_FAULT_EXTERNAL_ABORT, 1, (int)level, 0);
        int kind = decode(d, g, level, lsb, c->ips, &addr);
        if (kind == DESC_IS_TABLE) {
            if (!tt->had && DESC(d, APTABLE_RO))
                read_only = 1;
            table = addr;
            level++;
            lsb -= stride;
            width = stride;
            continue;
        }
        if (kind != DESC_IS_LEAF)
            return fault(r, kind, 1, (int)level, 0);
        if (!DESC(d, AF) && !c->affd)
            return fault(r, PYMSI_FAULT_ACCESS, 1, (int)level, 0);
        o->r = 1;
        o->w = !DESC(d, S1_AP2) && !read_only;
        if (write && !o->w)
            return fault(r, PYMSI_FAULT_PERMISSION, 1, (int)level, 0);
        o->oa = addr;
        o->shift = (uint8_t)lsb;
        o->level = (uint8_t)level;
        o->global = !DESC(d, NG);
        return 0;
    }
}

int pymsi_walk_nocheck(const pymsi_mem *m, const struct pymsi_xlate_cfg *cfg,
                       uint64_t iova, int write, struct pymsi_result *r)
{
    struct leaf l1, l2;
    memset(r, 0, sizeof(*r));
    if (cfg->has_s1) {
        if (s1_walk(m, cfg, iova, write, &l1, r))
            return 0;
        uint64_t ipa = l1.oa | (iova & ((UINT64_C(1) << l1.shift) - 1));
        if (cfg->has_s2) {
            if (s2_walk(m, &cfg->s2, ipa, write, &l2, r))
                return 0;
            r->pa = l2.oa | (ipa & ((UINT64_C(1) << l2.shift) - 1));
            r->page_size = UINT64_C(1) << (l1.shift < l2.shift ? l1.shift : l2.shift);
            r->writable = l1.w && l2.w;
            r->readable = l2.r;
            r->s1_writable = l1.w;
            r->s2_writable = l2.w;
            r->s2_level = l2.level;
        } else {
            r->pa = ipa;
            r->page_size = UINT64_C(1) << l1.shift;
            r->writable = l1.w;
            r->readable = 1;
            r->s1_writable = l1.w;
            r->s2_writable = 1;
        }
        r->ipa = ipa;
        r->level = l1.level;
        r->is_global = l1.global;
        return 0;
    }
    if (s2_walk(m, &cfg->s2, iova, write, &l2, r))
        return 0;
    r->pa = l2.oa | (iova & ((UINT64_C(1) << l2.shift) - 1));
    r->ipa = iova;
    r->page_size = UINT64_C(1) << l2.shift;
    r->writable = l2.w;
    r->readable = l2.r;
    r->s1_writable = 1;
    r->s2_writable = l2.w;
    r->level = l2.level;
    r->s2_level = l2.level;
    return 0;
}

int pymsi_walk(const pymsi_mem *m, const struct pymsi_xlate_cfg *cfg, uint64_t iova,
               int write, struct pymsi_result *r)
{
    int rc = pymsi_cfg_check(cfg);
    if (rc)
        return rc;
    return pymsi_walk_nocheck(m, cfg, iova, write, r);
}
