/*
 * The ITS command queue: the commands whose effects are table writes and checks
 * (MAPD, MAPC, MAPTI, MAPI, SYNC, INV, INVALL), run in C from the read pointer
 * to the write pointer, in the model's table formats (pymsi.hw.its):
 *
 *   device entry (8 bytes):      V [0], EventID bits - 1 [5:1], ITT address >> 8 [49:6]
 *   collection entry (8 bytes):  V [0], processor number [16:1]
 *   ITE (16 bytes):              word 0: V [0], virtual [1], INTID [63:32]
 *                                word 1: ICID [15:0], vPEID [31:16], doorbell [63:32]
 *
 * Every table and queue access goes through the memory's range-checked
 * accessors; a failed one stops the run as the model's memory error (stall).
 * The checks and their order are those of the model's Python handlers, so the
 * same command stream gives the same tables, errors and stalls either way.
 * Nothing allocates.
 */
#include <errno.h>

#include "internal.h"

enum {
    OP_SYNC = 0x05,
    OP_MAPD = 0x08,
    OP_MAPC = 0x09,
    OP_MAPTI = 0x0A,
    OP_MAPI = 0x0B,
    OP_INV = 0x0C,
    OP_INVALL = 0x0D,
};

#define C_OPS                                                                              \
    (UINT64_C(1) << OP_SYNC | UINT64_C(1) << OP_MAPD | UINT64_C(1) << OP_MAPC |              \
     UINT64_C(1) << OP_MAPTI | UINT64_C(1) << OP_MAPI | UINT64_C(1) << OP_INV |              \
     UINT64_C(1) << OP_INVALL)

#define LPI_BASE 8192u
#define SPURIOUS 1023u
#define STALL (-1)                 /* a memory error: the queue stalls */
#define PA52 ((UINT64_C(1) << 52) - 1)

struct ctx {
    pymsi_mem *m;
    const struct pymsi_its_cfg *cfg;
    pymsi_itc *itc;
    uint64_t *rec;
    size_t nrec;
};

static void record(struct ctx *c, uint64_t kind, uint64_t a, uint64_t b)
{
    uint64_t *r = c->rec + 3 * c->nrec++;
    r[0] = kind;
    r[1] = a;
    r[2] = b;
}

/* v >> n for any n (0 once n reaches the width). */
static inline uint64_t shr(uint64_t v, unsigned n)
{
    return n >= 64 ? 0 : v >> n;
}

/* Where table t keeps entry `index`: 1 (*addr), 0 (not provided) or STALL. */
static int entry_addr(const struct ctx *c, const struct pymsi_its_table *t, uint64_t index,
                      uint64_t *addr)
{
    if (!t->valid)
        return 0;
    if (!t->indirect) {
        uint64_t off = index * t->esize;
        if (off >= t->span)
            return 0;
        *addr = t->base + off;
        return 1;
    }
    uint64_t per_page = t->page / t->esize;
    uint64_t l1 = index / per_page;
    if (l1 * 8 >= t->span)
        return 0;
    uint64_t e;
    if (pymsi_mem_read_u64(c->m, t->base + l1 * 8, &e))
        return STALL;
    if (!(e >> 63))
        return 0;
    *addr = (e & PA52 & ~((uint64_t)t->page - 1)) + (index % per_page) * t->esize;
    return 1;
}

/* A mapped device's (ITT address, EventID bits): 1, 0 (not mapped) or STALL. */
static int dte(const struct ctx *c, uint64_t dev, uint64_t *itt, unsigned *bits)
{
    if (shr(dev, c->cfg->devbits))
        return 0;
    uint64_t addr, d;
    int r = entry_addr(c, &c->cfg->devices, dev, &addr);
    if (r <= 0)
        return r;
    if (pymsi_mem_read_u64(c->m, addr, &d))
        return STALL;
    if (!(d & 1))
        return 0;
    *itt = (d >> 6 & ((UINT64_C(1) << 44) - 1)) << 8;
    *bits = (unsigned)(d >> 1 & 0x1F) + 1;
    return 1;
}

/* The processor a mapped collection targets: 1 (*proc), 0 (not mapped) or STALL. */
static int collection_rd(const struct ctx *c, uint64_t icid, uint64_t *proc)
{
    if (shr(icid, c->cfg->cidbits))
        return 0;
    uint64_t addr, e;
    int r = entry_addr(c, &c->cfg->collections, icid, &addr);
    if (r <= 0)
        return r;
    if (pymsi_mem_read_u64(c->m, addr, &e))
        return STALL;
    if (!(e & 1))
        return 0;
    *proc = e >> 1 & 0xFFFF;
    return 1;
}

static int write64(const struct ctx *c, uint64_t addr, uint64_t v)
{
    return pymsi_mem_write_u64(c->m, addr, v) ? STALL : 0;
}

static int cmd_mapd(const struct ctx *c, uint64_t dev, uint64_t d1, uint64_t d2)
{
    if (shr(dev, c->cfg->devbits))
        return PYMSI_ITS_E_MAPD_DEVICE_OOR;
    uint64_t addr;
    int r = entry_addr(c, &c->cfg->devices, dev, &addr);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPD_DEVICE_OOR;
    uint64_t size = d1 & 0x1F;
    if (size + 1 > c->cfg->id_bits)
        return PYMSI_ITS_E_MAPD_ITTSIZE_OOR;
    uint64_t itt = d2 >> 8 & ((UINT64_C(1) << 44) - 1);
    return write64(c, addr, d2 >> 63 ? 1 | size << 1 | itt << 6 : 0);
}

static int cmd_mapc(const struct ctx *c, uint64_t d2)
{
    uint64_t icid = d2 & 0xFFFF;
    if (shr(icid, c->cfg->cidbits))
        return PYMSI_ITS_E_MAPC_COLLECTION_OOR;
    uint64_t addr;
    int r = entry_addr(c, &c->cfg->collections, icid, &addr);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPC_COLLECTION_OOR;
    uint64_t rdbase = d2 >> 16 & 0xFFFFFFFF, valid = d2 >> 63;
    if (valid && rdbase >= c->cfg->nproc)
        return PYMSI_ITS_E_MAPC_PROCNUM_OOR;
    return write64(c, addr, valid ? 1 | (rdbase & 0xFFFF) << 1 : 0);
}

static int map_physical(const struct ctx *c, uint64_t dev, uint64_t event, uint64_t intid,
                        uint64_t icid)
{
    uint64_t itt;
    unsigned bits;
    int r = dte(c, dev, &itt, &bits);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPTI_UNMAPPED_DEVICE;
    if (shr(event, bits))
        return PYMSI_ITS_E_MAPTI_ID_OOR;
    if (intid < LPI_BASE || shr(intid, c->cfg->id_bits))
        return PYMSI_ITS_E_MAPTI_PHYSICALID_OOR;
    if (shr(icid, c->cfg->cidbits))
        return PYMSI_ITS_E_COLLECTION_OOR;
    uint64_t addr = itt + event * 16;
    r = write64(c, addr, 1 | intid << 32);
    return r ? r : write64(c, addr + 8, icid | (uint64_t)SPURIOUS << 32);
}

/* The ITE of (dev, event): 0 (ite[]), STALL or `missing` (not mapped). */
static int read_ite(const struct ctx *c, uint64_t dev, uint64_t event, int missing,
                    uint64_t ite[2])
{
    uint64_t itt;
    unsigned bits;
    int r = dte(c, dev, &itt, &bits);
    if (r < 0)
        return r;
    if (!r || shr(event, bits))
        return missing;
    uint64_t addr = itt + event * 16;
    if (pymsi_mem_read_u64(c->m, addr, &ite[0]) || pymsi_mem_read_u64(c->m, addr + 8, &ite[1]))
        return STALL;
    return ite[0] & 1 ? 0 : missing;
}

static int cmd_inv(struct ctx *c, uint64_t dev, uint64_t event)
{
    uint64_t ite[2], proc;
    int r = read_ite(c, dev, event, PYMSI_ITS_E_INV_UNMAPPED_INTERRUPT, ite);
    if (r)
        return r;
    if (ite[0] >> 1 & 1)                      /* virtual: vLPI configuration is not cached */
        return 0;
    r = collection_rd(c, ite[1] & 0xFFFF, &proc);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_INV_UNMAPPED_INTERRUPT;
    if (proc >= c->cfg->nproc)
        return PYMSI_ITS_E_PROCNUM_OOR;
    record(c, PYMSI_ITSQ_INV, proc, ite[0] >> 32);
    return 0;
}

static int cmd_invall(struct ctx *c, uint64_t d2)
{
    uint64_t proc;
    int r = collection_rd(c, d2 & 0xFFFF, &proc);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_INVALL_UNMAPPED_COLLECTION;
    if (proc >= c->cfg->nproc)
        return PYMSI_ITS_E_PROCNUM_OOR;
    record(c, PYMSI_ITSQ_INVALL, proc, 0);
    return 0;
}

/* One command: 0, STALL or an error code; its cache drop recorded (and done) first. */
static int execute(struct ctx *c, unsigned op, uint64_t d0, uint64_t d1, uint64_t d2)
{
    uint64_t dev = d0 >> 32, event = d1 & 0xFFFFFFFF;
    switch (op) {
    case OP_MAPD:
        record(c, PYMSI_ITSQ_DROP_DEVICE, dev, 0);
        if (c->itc)
            pymsi_itc_clear(c->itc);
        return cmd_mapd(c, dev, d1, d2);
    case OP_MAPC:
        record(c, PYMSI_ITSQ_DROP_COLLECTION, d2 & 0xFFFF, 0);
        if (c->itc)
            pymsi_itc_clear(c->itc);
        return cmd_mapc(c, d2);
    case OP_MAPTI:
    case OP_MAPI:
        record(c, PYMSI_ITSQ_DROP_EVENT, dev, event);
        if (c->itc)
            pymsi_itc_remove(c->itc, (uint32_t)dev, (uint32_t)event);
        return map_physical(c, dev, event, op == OP_MAPTI ? d1 >> 32 : event, d2 & 0xFFFF);
    case OP_SYNC:
        return (d2 >> 16 & 0xFFFFFFFF) < c->cfg->nproc ? 0 : PYMSI_ITS_E_PROCNUM_OOR;
    case OP_INV:
        return cmd_inv(c, dev, event);
    default: /* OP_INVALL */
        return cmd_invall(c, d2);
    }
}

static int table_ok(const struct pymsi_its_table *t)
{
    return (t->page == 4096 || t->page == 16384 || t->page == 65536) && t->esize &&
           t->esize <= t->page;
}

int pymsi_its_cmdq_run(pymsi_mem *m, const struct pymsi_its_cfg *cfg, pymsi_itc *itc,
                       uint64_t ops, uint32_t cwriter, struct pymsi_its_run *run,
                       uint64_t *rec, size_t rec_max)
{
    if (!m || !cfg || !run || (!rec && rec_max))
        return -EINVAL;
    if (!cfg->cq_size || cfg->cq_size % 32 || cwriter >= cfg->cq_size || cwriter % 32 ||
        run->creadr >= cfg->cq_size || run->creadr % 32)
        return -EINVAL;
    if (cfg->devbits < 1 || cfg->devbits > 32 || cfg->id_bits < 1 || cfg->id_bits > 32 ||
        cfg->cidbits < 1 || cfg->cidbits > 32 || !table_ok(&cfg->devices) ||
        !table_ok(&cfg->collections))
        return -EINVAL;
    struct ctx c = {m, cfg, itc, rec, 0};
    uint32_t creadr = run->creadr;
    int status = PYMSI_ITSQ_DONE;
    run->ncmds = run->op = run->code = 0;
    while (creadr != cwriter) {
        if (c.nrec + 2 > rec_max) {
            status = PYMSI_ITSQ_FULL;
            break;
        }
        uint8_t raw[32];
        if (pymsi_mem_read(m, cfg->cq_base + creadr, raw, sizeof raw)) {
            status = PYMSI_ITSQ_STALL;
            break;
        }
        uint64_t d0 = pymsi_le64(raw), d1 = pymsi_le64(raw + 8), d2 = pymsi_le64(raw + 16);
        unsigned op = (unsigned)(d0 & 0xFF);
        run->op = op;
        if (op >= 64 || !(ops & C_OPS & UINT64_C(1) << op)) {
            status = PYMSI_ITSQ_HANDOFF;
            break;
        }
        int r = execute(&c, op, d0, d1, d2);
        if (r) {
            status = r < 0 ? PYMSI_ITSQ_STALL : PYMSI_ITSQ_ERROR;
            run->code = r < 0 ? 0 : (uint32_t)r;
            break;
        }
        run->ncmds++;
        creadr = (creadr + 32) % cfg->cq_size;
    }
    if (status == PYMSI_ITSQ_DONE || status == PYMSI_ITSQ_FULL)
        run->op = 0;
    run->creadr = creadr;
    run->nrec = (uint32_t)c.nrec;
    return status;
}
