/*
 * pymsi C translation core: physical memory, VMSAv8-64 stage-1 / stage-2 /
 * nested table walks as an SMMUv3 performs them, an IOTLB, the
 * per-(device, MSI index) address table, and batch entry points.
 *
 * Conventions: functions return 0 (or a count) on success and a negative
 * errno value on failure.  Nothing allocates on the walk, lookup, compose or
 * batch paths.  Objects are not thread-safe: one owner at a time.
 *
 * The block between the cdef markers is fed verbatim to cffi's cdef(), so it
 * must stay free of preprocessor conditionals and inline code.
 */
#ifndef PYMSI_H
#define PYMSI_H

#include <stddef.h>
#include <stdint.h>

#include "gic_formats.h"   /* generated from pymsi/core/gic_formats.py */

/* cdef-begin */
/* Fault kinds (pymsi.core.FaultKind mirrors these values). */
#define PYMSI_FAULT_NONE 0
#define PYMSI_FAULT_TRANSLATION 1
#define PYMSI_FAULT_ADDRESS_SIZE 2
#define PYMSI_FAULT_ACCESS 3
#define PYMSI_FAULT_PERMISSION 4
#define PYMSI_FAULT_EXTERNAL_ABORT 5

/* IOTLB entry kinds: which stages produced the cached translation. */
#define PYMSI_KIND_S1 1
#define PYMSI_KIND_S2 2
#define PYMSI_KIND_S12 3

/* Range selector of an invalidation. */
#define PYMSI_TLBI_RANGE_NONE 0
#define PYMSI_TLBI_RANGE_INPUT 1
#define PYMSI_TLBI_RANGE_IPA 2

/*
 * Per-item status of the batch entry points: 0 = translated; -ENOENT = no
 * MSI table entry; a positive value encodes a fault:
 * PYMSI_STATUS_FAULT | kind | stage << 4 | level << 8 | s1_table_walk << 12.
 */
#define PYMSI_STATUS_FAULT 65536

typedef struct pymsi_mem pymsi_mem;
typedef struct pymsi_tlb pymsi_tlb;
typedef struct pymsi_msi_table pymsi_msi_table;

/* One stage-1 translation table (TTB0 or TTB1) with its derived geometry. */
struct pymsi_s1_tt {
    uint64_t ttb;
    uint8_t enabled;      /* !EPDn */
    uint8_t tsz;          /* TnSZ, 16..39 */
    uint8_t gshift;       /* granule: 12, 14 or 16 */
    uint8_t start_level;  /* derived from the input size */
    uint8_t had;          /* hierarchical attributes disabled */
    uint8_t tbi;          /* top byte ignored */
};

struct pymsi_s1_cfg {
    struct pymsi_s1_tt tt[2];
    uint8_t ips;          /* output (IPA) size in bits */
    uint8_t affd;         /* access flag faults disabled */
};

struct pymsi_s2_cfg {
    uint64_t vttb;
    uint8_t tsz;          /* S2T0SZ, 16..39 */
    uint8_t gshift;       /* 12, 14 or 16 */
    uint8_t start_level;  /* derived from S2SL0 and the granule */
    uint8_t ps;           /* output (PA) size in bits */
    uint8_t affd;
};

/* What a stream is translated with: stage 1, stage 2 or both, and its tags. */
struct pymsi_xlate_cfg {
    struct pymsi_s1_cfg s1;
    struct pymsi_s2_cfg s2;
    uint8_t has_s1;
    uint8_t has_s2;
    uint16_t asid;
    uint16_t vmid;
};

struct pymsi_result {
    uint64_t pa;          /* output address */
    uint64_t ipa;         /* stage-1 output (nested); the input for S2 only; pa for S1 only */
    uint64_t page_size;   /* size of the translation (the smaller stage's) */
    uint64_t fault_ipa;   /* for stage-2 faults: the IPA that faulted */
    uint8_t fault_kind;   /* PYMSI_FAULT_* */
    uint8_t fault_stage;  /* 1 or 2 */
    uint8_t fault_level;  /* 0..3 */
    uint8_t s1_table_walk;/* stage-2 fault while fetching a stage-1 table */
    uint8_t writable;     /* both stages allow writes */
    uint8_t readable;     /* stage 2 allows reads (stage 1 always does) */
    uint8_t s1_writable;
    uint8_t s2_writable;
    uint8_t level;        /* leaf level of the first stage used */
    uint8_t s2_level;     /* leaf level of stage 2 (nested) */
    uint8_t is_global;    /* stage-1 leaf had nG == 0 */
    uint8_t tlb_hit;
};

/* Physical memory: sparse RAM regions, zero-filled 4 KiB pages made on first write. */
pymsi_mem *pymsi_mem_new(void);
void pymsi_mem_free(pymsi_mem *m);
int pymsi_mem_add_ram(pymsi_mem *m, uint64_t base, uint64_t size);
int pymsi_mem_is_ram(const pymsi_mem *m, uint64_t addr, uint64_t len);
int pymsi_mem_read(const pymsi_mem *m, uint64_t addr, void *buf, size_t len);
int pymsi_mem_write(pymsi_mem *m, uint64_t addr, const void *buf, size_t len);
int pymsi_mem_read_u32(const pymsi_mem *m, uint64_t addr, uint32_t *out);
int pymsi_mem_read_u64(const pymsi_mem *m, uint64_t addr, uint64_t *out);
int pymsi_mem_write_u32(pymsi_mem *m, uint64_t addr, uint32_t v);
int pymsi_mem_write_u64(pymsi_mem *m, uint64_t addr, uint64_t v);
size_t pymsi_mem_pages(const pymsi_mem *m);
/* Make the 4 KiB page at `addr` of `m` the same backing page as the page at
 * `src_addr` of `src` (made in `src` if never written); re-points a page that
 * existed.  Both aligned and RAM, else -EINVAL. */
int pymsi_mem_alias_page(pymsi_mem *m, uint64_t addr, pymsi_mem *src, uint64_t src_addr);
size_t pymsi_mem_regions(const pymsi_mem *m, uint64_t *bases, uint64_t *sizes, size_t max);

/* Does nothing: the floor the benchmarks measure a single call against (an
 * empty cffi call with four integer arguments). */
int pymsi_nop4(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* Table walks: 0 with the outcome (translation or fault) in *r, -EINVAL for a bad cfg. */
int pymsi_cfg_check(const struct pymsi_xlate_cfg *cfg);
int pymsi_walk(const pymsi_mem *m, const struct pymsi_xlate_cfg *cfg,
               uint64_t iova, int write, struct pymsi_result *r);
/* Walk through the IOTLB (tlb may be NULL: walk only). */
int pymsi_translate(const pymsi_mem *m, pymsi_tlb *tlb,
                    const struct pymsi_xlate_cfg *cfg, uint64_t iova, int write,
                    struct pymsi_result *r);

/* IOTLB. */
struct pymsi_tlb_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t inserts;
    uint64_t evictions;
    uint32_t count;
    uint32_t capacity;
};

struct pymsi_tlb_entry_info {
    uint64_t iova;        /* input page base */
    uint64_t ipa;         /* IPA page base */
    uint64_t pa;          /* output page base */
    uint8_t shift;        /* log2 of the page size */
    uint8_t kind;         /* PYMSI_KIND_* */
    uint8_t is_global;
    uint8_t granule;      /* granule shift of the first stage */
    uint8_t level;
    uint8_t s2_level;
    uint8_t s1_writable;
    uint8_t s2_readable;
    uint8_t s2_writable;
    uint16_t asid;
    uint16_t vmid;
};

struct pymsi_tlbi {
    uint8_t kinds;        /* bit (1 << kind) for each kind affected */
    uint8_t match_vmid;
    uint8_t match_asid;
    uint8_t asid_hits_global;  /* with match_asid: global entries match too */
    uint8_t range;        /* PYMSI_TLBI_RANGE_* */
    uint16_t vmid;
    uint16_t asid;
    uint64_t start;       /* inclusive */
    uint64_t last;        /* inclusive */
};

pymsi_tlb *pymsi_tlb_new(uint32_t capacity);
void pymsi_tlb_free(pymsi_tlb *t);
void pymsi_tlb_get_stats(const pymsi_tlb *t, struct pymsi_tlb_stats *out);
void pymsi_tlb_reset_stats(pymsi_tlb *t);
int pymsi_tlb_invalidate(pymsi_tlb *t, const struct pymsi_tlbi *spec);
size_t pymsi_tlb_entries(const pymsi_tlb *t, struct pymsi_tlb_entry_info *out, size_t max);

/* MSI address table: (device id, MSI index) -> (IOVA, shift). */
pymsi_msi_table *pymsi_msi_new(void);
void pymsi_msi_free(pymsi_msi_table *t);
int pymsi_msi_reserve(pymsi_msi_table *t, size_t n);
int pymsi_msi_set(pymsi_msi_table *t, uint32_t dev, uint32_t index, uint64_t iova, uint32_t shift);
int pymsi_msi_get(const pymsi_msi_table *t, uint32_t dev, uint32_t index, uint64_t *iova, uint32_t *shift);
int pymsi_msi_remove(pymsi_msi_table *t, uint32_t dev, uint32_t index);
int pymsi_msi_compose(const pymsi_msi_table *t, uint32_t dev, uint32_t index, uint64_t doorbell_pa, uint64_t *addr);
size_t pymsi_msi_count(const pymsi_msi_table *t);
size_t pymsi_msi_items(const pymsi_msi_table *t, uint32_t *devs, uint32_t *idx, uint64_t *iova, uint8_t *shift, size_t max);

/* Batch entry points over caller-owned buffers; return the number of items with status 0. */
long pymsi_compose_batch(const pymsi_msi_table *t, uint64_t doorbell_pa,
                         const uint32_t *devs, const uint32_t *idx, size_t n,
                         uint64_t *out_addr, int32_t *status);
long pymsi_translate_batch(const pymsi_mem *m, pymsi_tlb *tlb,
                           const struct pymsi_xlate_cfg *cfg, int write,
                           const uint64_t *iova, size_t n,
                           uint64_t *out_pa, int32_t *status);
long pymsi_msi_batch(const pymsi_msi_table *t, const pymsi_mem *m, pymsi_tlb *tlb,
                     const struct pymsi_xlate_cfg *cfg, uint64_t doorbell_pa,
                     const uint32_t *devs, const uint32_t *idx, size_t n,
                     uint64_t *out_addr, uint64_t *out_pa, int32_t *status);
/*
 * Stream configurations of an SMMU, for translating many (StreamID, address)
 * pairs in one call: each known StreamID aborts, bypasses, or translates with
 * its configuration (copied in).  `ias` (0: none) is the input size checked
 * before stage 2 when there is no stage 1 (a stage-1 address size fault).
 * Per-item status: 0 translated, PYMSI_STATUS_BYPASS, PYMSI_STATUS_ABORT,
 * -EAGAIN (StreamID not known: the caller resolves it), or a fault code as
 * above, in which case out_pa holds the faulting IPA for a stage-2 fault.
 */
#define PYMSI_STREAM_ABORT 1
#define PYMSI_STREAM_BYPASS 2
#define PYMSI_STREAM_TRANSLATE 3
#define PYMSI_STATUS_BYPASS 1
#define PYMSI_STATUS_ABORT 2

typedef struct pymsi_streams pymsi_streams;
pymsi_streams *pymsi_streams_new(void);
void pymsi_streams_free(pymsi_streams *s);
int pymsi_streams_set(pymsi_streams *s, uint32_t sid, int mode, const struct pymsi_xlate_cfg *cfg,
                      unsigned ias);
int pymsi_streams_remove(pymsi_streams *s, uint32_t sid);
void pymsi_streams_clear(pymsi_streams *s);
size_t pymsi_streams_count(const pymsi_streams *s);
/*
 * One transaction through a known StreamID translated with a configuration: the
 * stream's probe and the IOTLB translate (a walk on a miss) in one call.  Returns 0
 * when `r` holds the result (a fault included); 1 when the stream is not known,
 * aborts, bypasses or the address fails its `ias` check (the caller's full path
 * handles those; `r` is left alone).
 */
int pymsi_stream_translate(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s,
                           uint32_t sid, uint64_t iova, int write, struct pymsi_result *r);
/*
 * Returns how many items were translated or bypassed.  `unresolved` (NULL, or room
 * for n items) gets the index of every other item, in order: the n - result items
 * the caller has to look at.
 */
long pymsi_stream_batch(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s, int write,
                        const uint32_t *sids, const uint64_t *iovas, size_t n,
                        uint64_t *out_pa, int32_t *status, uint32_t *unresolved);
/*
 * Interrupt delivery (its.c).  pymsi_mem_bit reads (PYMSI_BIT_READ), sets or
 * clears bit `bit` (0..7) of the byte at `addr`: returns the bit as it was (0
 * or 1), -EFAULT if the byte is not RAM, -EINVAL for a bad bit or op.
 * pymsi_pending_batch sets bit intids[i] of the pending table at tables[i]
 * for every i (old[i]: the bit as it was, or -EFAULT); returns how many were set.
 */
#define PYMSI_BIT_READ 0
#define PYMSI_BIT_SET 1
#define PYMSI_BIT_CLEAR 2
int pymsi_mem_bit(pymsi_mem *m, uint64_t addr, unsigned bit, int op);
long pymsi_pending_batch(pymsi_mem *m, const uint64_t *tables, const uint32_t *intids,
                         size_t n, int32_t *old);
/*
 * The ITS translation cache batches use (its.c): (DeviceID, EventID) -> (INTID,
 * processor).  set may allocate (-ENOMEM); get / remove give -ENOENT for a key
 * not there.  pymsi_itc_lookup_batch looks up every events[k] of `dev`: a hit
 * whose processor is below nproc and whose INTID is in [8192, limits[proc])
 * gets status[k] = the processor, the others -ENOENT; intids[k] is the cached
 * INTID (0 if none); the hits' INTIDs are written to grouped[] by processor
 * (item order within each), counts[p] of them for processor p.  Returns the
 * number of hits.  pymsi_msix_gather reads the MSI-X table entries of vectors[k]
 * (a table of nvec 16-byte entries): status 0 (to send), 1 (masked: by its
 * vector control or masked_all) or -EINVAL (no such vector); returns how many
 * are to send.
 */
typedef struct pymsi_itc pymsi_itc;
pymsi_itc *pymsi_itc_new(void);
void pymsi_itc_free(pymsi_itc *t);
int pymsi_itc_set(pymsi_itc *t, uint32_t dev, uint32_t event, uint32_t intid, uint32_t proc);
int pymsi_itc_get(const pymsi_itc *t, uint32_t dev, uint32_t event, uint32_t *intid,
                  uint32_t *proc);
int pymsi_itc_remove(pymsi_itc *t, uint32_t dev, uint32_t event);
void pymsi_itc_clear(pymsi_itc *t);
size_t pymsi_itc_count(const pymsi_itc *t);
long pymsi_itc_lookup_batch(const pymsi_itc *t, uint32_t dev, const uint32_t *events, size_t n,
                            const uint32_t *limits, size_t nproc, uint32_t *intids,
                            int32_t *status, uint32_t *grouped, uint32_t *counts);
long pymsi_msix_gather(const uint8_t *table, size_t nvec, int masked_all,
                       const uint32_t *vectors, size_t n, uint64_t *addr, uint32_t *data,
                       int32_t *status);
/*
 * The ITS command queue (itscmd.c): the commands whose effects are table
 * writes and checks -- MAPD, MAPC, MAPTI, MAPI, SYNC, INV, INVALL -- executed
 * in C from GITS_CREADR (run->creadr) up to `cwriter`, in the ITS model's own
 * table formats (pymsi.hw.its: 8-byte device / collection entries, 16-byte
 * ITEs), every table address range-checked through the memory.  `ops` has bit
 * `opcode` set for each of those commands C may run; any other command at the
 * read pointer is handed back (PYMSI_ITSQ_HANDOFF, not executed).  What only the
 * caller can do is returned as records of three u64 (kind, a, b), in command
 * order: a translation-cache drop (also done on `itc`, which may be NULL) and a
 * redistributor invalidation.  A command with bad parameters stops the run with
 * PYMSI_ITSQ_ERROR and its error code (its drop recorded, the read pointer on
 * it); a memory error reading the command or a table stops it with
 * PYMSI_ITSQ_STALL; PYMSI_ITSQ_FULL when fewer than two records fit.  Returns
 * the status, or -EINVAL for a bad configuration or pointer.
 */
/* The statuses, record kinds (PYMSI_ITSQ_*) and command error codes (PYMSI_ITS_E_*)
 * are in gic_formats.h, generated from pymsi/core/gic_formats.py and pymsi/core/common.py. */

/* A decoded GITS_BASER<n>: flat or two-level (indirect) table of esize-byte entries. */
struct pymsi_its_table {
    uint64_t base;
    uint64_t span;        /* bytes of the (level-1) table */
    uint32_t esize;       /* 1..page */
    uint32_t page;        /* 4096, 16384 or 65536 */
    uint8_t valid;
    uint8_t indirect;
};

struct pymsi_its_cfg {
    uint64_t cq_base;     /* the command queue (GITS_CBASER) */
    uint32_t cq_size;     /* bytes, a non-zero multiple of 32 */
    uint32_t nproc;       /* redistributors: RDbase (processor number) < nproc */
    uint8_t devbits;      /* DeviceID, EventID/INTID and collection ID widths, 1..32 */
    uint8_t id_bits;
    uint8_t cidbits;
    struct pymsi_its_table devices;
    struct pymsi_its_table collections;
};

struct pymsi_its_run {
    uint32_t creadr;      /* in: the read pointer; out: where the run stopped */
    uint32_t ncmds;       /* out: commands completed */
    uint32_t nrec;        /* out: records written */
    uint32_t op;          /* out: opcode at the read pointer (ERROR, HANDOFF) */
    uint32_t code;        /* out: the error (ERROR) */
};

int pymsi_its_cmdq_run(pymsi_mem *m, const struct pymsi_its_cfg *cfg, pymsi_itc *itc,
                       uint64_t ops, uint32_t cwriter, struct pymsi_its_run *run,
                       uint64_t *rec, size_t rec_max);
/*
 * One MSI write along a cached route (its.c), the C parts of the single path in
 * one call: the SMMU's stream translate of (sid, iova) for a write, as
 * pymsi_stream_translate does it (into *r); then, when that is a translation to
 * `doorbell` (an ITS's GITS_TRANSLATER, not RAM in `ram`), the ITS translation
 * cache's entry for (dev, event), if its processor is below nproc and its INTID
 * in [8192, limits[proc]): bit INTID of the pending table at tables[proc] in
 * `gicmem` is set.  Returns PYMSI_FIRE_NONE when the stream translator does not
 * answer (nothing done, *r left alone); PYMSI_FIRE_TRANSLATED when it did (*r
 * holds the result: a fault, another address, RAM, or no usable cache entry) and
 * nothing else was done; otherwise proc << 34 | intid << 2 | the pending bit as
 * it was (0 or 1), or 2 when its byte is not RAM (nothing written).  Never
 * allocates.
 */
#define PYMSI_FIRE_NONE -1
#define PYMSI_FIRE_TRANSLATED -2
int64_t pymsi_msi_fire(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s,
                       const pymsi_mem *ram, const pymsi_itc *itc, pymsi_mem *gicmem,
                       const uint32_t *limits, const uint64_t *tables, size_t nproc,
                       struct pymsi_result *r, uint32_t sid, uint64_t iova, uint32_t dev,
                       uint32_t event, uint64_t doorbell);
/* cdef-end */

#endif
