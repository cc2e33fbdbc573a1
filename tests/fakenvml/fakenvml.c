/*
 * fakenvml.c - a fake libnvidia-ml.so.1 for testing vramwatch without a GPU.
 *
 * The real `pynvml` binding (nvidia-ml-py) loads this library instead of the
 * NVIDIA driver's NVML and calls it through ctypes, so the binding's own
 * struct layouts, buffer-size protocol and error mapping are exercised.
 *
 * Build:
 *   gcc -shared -fPIC -O2 -Wall -Wextra -Werror \
 *       -Wl,-soname,libnvidia-ml.so.1 -o DIR/libnvidia-ml.so.1 fakenvml.c
 * (tests/fakenvml/__init__.py: build() does this; it can also hide symbols
 * with a linker version script to imitate an older driver.)
 *
 * STATE FILE
 * ==========
 * Every API call re-reads the file named by the environment variable
 * FAKE_NVML_STATE (getenv at each call) and re-parses it when its CONTENT
 * differs from the last load (a byte compare: mtime/inode checks miss
 * rewrites that land in the same coarse timestamp tick with a recycled
 * inode).  Write it atomically (temporary file + rename).  A reload resets
 * error counters and "grow" races.
 *
 * A missing file (or unset variable) is "no driver": nvmlInit* return
 * NVML_ERROR_DRIVER_NOT_LOADED, and after a successful init every call except
 * nvmlShutdown and nvmlErrorString returns NVML_ERROR_DRIVER_NOT_LOADED.
 *
 * One directive a line; tokens are separated by blanks; a token may be
 * "double quoted" to contain blanks (no escapes); a token starting with '#'
 * starts a comment that runs to the end of the line.
 *
 *   driver VERSION              nvmlSystemGetDriverVersion  (default 550.54.15)
 *   nvml VERSION                nvmlSystemGetNVMLVersion    (default 12.<driver>)
 *   cuda INT                    nvmlSystemGetCudaDriverVersion[_v2] (default 12040)
 *   gpu UUID TOTAL ["NAME"]     one GPU; indexes follow the order of gpu lines.
 *                               NAME defaults to "Tesla T4".
 *   used IDX SIZE               memory used on GPU IDX but by no listed process
 *                               (default 0)
 *   reserved IDX SIZE           memory reserved by driver/firmware (default 0)
 *   proc IDX[:M] PID SIZE|na [KINDS]
 *                               a process on GPU IDX (on its MIG device M with
 *                               ":M"); "na" = usage not available
 *                               (NVML_VALUE_NOT_AVAILABLE, None in pynvml).
 *                               KINDS: comma list of compute, graphics, mps
 *                               (default compute); the process appears in each
 *                               named list but counts once in device memory.
 *   error FUNC[@IDX] CODE [COUNT]
 *                               FUNC returns CODE (for GPU IDX only with @IDX).
 *                               With COUNT, only the next COUNT matching calls
 *                               fail.  CODE: GPU_IS_LOST, NVML_ERROR_GPU_IS_LOST
 *                               or a number.  FUNC: an exported NVML function
 *                               name, "PREFIX*" or "*".  Wildcards never match
 *                               nvmlShutdown or nvmlErrorString.  nvmlInit,
 *                               nvmlInit_v2 and nvmlInitWithFlags are one
 *                               function here: naming any fails all three.
 *                               The first matching error line wins.
 *   grow FUNC[@IDX] N [SIZE|na] Process-list race: after FUNC answers
 *                               NVML_ERROR_INSUFFICIENT_SIZE (the size query), its
 *                               list has N extra processes (pids 4194304+k, beyond
 *                               any Linux pid_max, usage SIZE, default 1MiB) until
 *                               that function fills a buffer successfully; then
 *                               the extras vanish again (so a retry with the new
 *                               size converges).  One race per rule and GPU: a
 *                               size query by another function matching the same
 *                               wildcard rule takes it over.  Extras are not
 *                               counted in memory info.  The first matching grow
 *                               line applies.  FUNC may be a wildcard as above.
 *   delay FUNC[@IDX] MS         FUNC sleeps MS milliseconds before returning
 *                               (outside the library lock).
 *   lost UUID [CODE]            the GPU with this UUID has fallen off the bus
 *                               (an Xid 79) or needs a reset: it keeps its index
 *                               and its place in the count, but getting its
 *                               handle (by index or UUID) and every call on a
 *                               handle to it return CODE (default GPU_IS_LOST;
 *                               RESET_REQUIRED for a GPU that needs a reset).
 *                               Drop the line and the GPU is back: old handles
 *                               work again.  Removing its "gpu" line instead
 *                               is a hot-unplug (indexes shift); adding a "gpu"
 *                               line is a hot-add.
 *   mig IDX MIG_UUID TOTAL ["NAME"]
 *                               a MIG device on GPU IDX (which then has MIG mode
 *                               enabled); its MIG index follows the order of the
 *                               mig lines of that GPU. It has its own handle
 *                               (nvmlDeviceGetMigDeviceHandleByIndex), memory
 *                               (TOTAL) and process lists; NAME defaults to
 *                               "MIG 1g.10gb". The parent reports the sum of
 *                               its instances and lists their processes with
 *                               usage not available (once per instance), as
 *                               the real driver does.
 *   reap                        processes whose PID no longer exists (no
 *                               /proc/PID) vanish from the lists and free their
 *                               memory, as on a real driver when a process exits.
 *   procdir DIR                 every regular file in DIR is read as more lines
 *                               (only "proc" lines are allowed there), so a test
 *                               program can declare its own VRAM by writing
 *                               DIR/<pid>; a restarted unit's new process
 *                               declares again and the old one is reaped.
 *
 * SIZE: an integer with an optional unit B, KiB, MiB, GiB or TiB (binary).
 * Memory (v1): used = reserved + used + sum(process usage, na counts 0);
 *              free = total - that, never below 0.
 * Memory (v2): reserved as given, used excludes reserved, same free.
 * Lines may come in any order; IDX must name an existing gpu line.  A syntax
 * error makes every call return NVML_ERROR_UNKNOWN and prints one message to
 * stderr; fakeNvmlStateError() returns it.
 *
 * OTHER BEHAVIOUR
 *   - Init is reference counted like the real library; calls made while not
 *     initialized return NVML_ERROR_UNINITIALIZED.
 *   - Device handles point into a table of per-GPU slots keyed by UUID, like
 *     a physical device: a handle follows its GPU when indexes shift, and
 *     returns NVML_ERROR_GPU_IS_LOST once its UUID is no longer in the file
 *     (e.g. its index no longer exists).  Slots are never freed (up to
 *     FAKE_MAX_SLOTS distinct UUIDs per process, then absent ones are reused).
 *   - NULL or foreign pointers give NVML_ERROR_INVALID_ARGUMENT.
 *   - A GPU without mig lines does not support MIG: nvmlDeviceGetMigMode
 *     returns NOT_SUPPORTED (a T4). One with mig lines reports MIG enabled,
 *     nvmlDeviceGetMaxMigDeviceCount 7, and NOT_FOUND for MIG indexes that
 *     have no device.  Errors injected with @IDX on a MIG device's calls
 *     use its parent's index.
 *   - One mutex serialises every call.
 *   - Test hooks (not NVML API): fakeNvmlReset() drops the init refcount and
 *     the cached state; fakeNvmlStateError() returns the last parse error.
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <unistd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* NVML ABI                                                                  */

typedef int nvmlReturn_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_ALREADY_INITIALIZED 5
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_INSUFFICIENT_POWER 8
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_IRQ_ISSUE 11
#define NVML_ERROR_LIBRARY_NOT_FOUND 12
#define NVML_ERROR_FUNCTION_NOT_FOUND 13
#define NVML_ERROR_CORRUPTED_INFOROM 14
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_RESET_REQUIRED 16
#define NVML_ERROR_OPERATING_SYSTEM 17
#define NVML_ERROR_LIB_RM_VERSION_MISMATCH 18
#define NVML_ERROR_IN_USE 19
#define NVML_ERROR_MEMORY 20
#define NVML_ERROR_NO_DATA 21
#define NVML_ERROR_VGPU_ECC_NOT_SUPPORTED 22
#define NVML_ERROR_INSUFFICIENT_RESOURCES 23
#define NVML_ERROR_FREQ_NOT_SUPPORTED 24
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_DEPRECATED 26
#define NVML_ERROR_NOT_READY 27
#define NVML_ERROR_GPU_NOT_FOUND 28
#define NVML_ERROR_INVALID_STATE 29
#define NVML_ERROR_RESET_TYPE_NOT_SUPPORTED 30
#define NVML_ERROR_UNKNOWN 999

#define NVML_VALUE_NOT_AVAILABLE_ULL (~0ULL)
#define NVML_VALUE_NOT_AVAILABLE_UINT (~0U)

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* NVML_STRUCT_VERSION(Memory, 2) = sizeof(nvmlMemory_v2_t) | 2 << 24 */
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;
_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t layout");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24, "nvmlProcessInfo_v2_t layout");

/* ------------------------------------------------------------------------ */
/* Internal state                                                            */

#define FAKE_MAX_GPUS 64
#define FAKE_MAX_SLOTS 4096
#define FAKE_MAX_RULES 256
#define FAKE_STR 96
#define FAKE_FN 80
#define FAKE_MAX_FILE (1 << 20)
#define FAKE_GROW_PID_BASE 4194304u /* PID_MAX_LIMIT: no real pid is this big */

#define KIND_COMPUTE 1
#define KIND_GRAPHICS 2
#define KIND_MPS 4

struct fake_proc {
    unsigned int pid;
    unsigned long long used; /* NVML_VALUE_NOT_AVAILABLE_ULL = na */
    int kinds;
};

struct fake_gpu {
    char uuid[FAKE_STR];
    char name[FAKE_STR];
    unsigned long long total;
    unsigned long long base_used;
    unsigned long long reserved;
    struct fake_proc *procs;
    size_t nprocs;
    size_t cap;
    nvmlReturn_t lost; /* NVML_SUCCESS, or what every call on it returns */
    int parent;        /* a MIG device: its GPU's index; a GPU: -1 */
    int nmig;          /* a GPU: how many MIG devices it has */
};

#define FAKE_MAX_MIGS_PER_GPU 7
#define FAKE_MAX_MIGS (FAKE_MAX_GPUS * FAKE_MAX_MIGS_PER_GPU)

enum rule_type { RULE_ERROR, RULE_GROW, RULE_DELAY };

struct fake_rule {
    enum rule_type type;
    char fn[FAKE_FN]; /* exact name, or prefix when wildcard */
    int wildcard;
    int gpu;           /* -1: any GPU (and system functions) */
    nvmlReturn_t code; /* RULE_ERROR */
    long remaining;    /* RULE_ERROR: -1 = unlimited */
    unsigned n;        /* RULE_GROW: extra processes; RULE_DELAY: ms */
    unsigned long long grow_used;
    /* RULE_GROW: per GPU, 1 + index in g_functions of the function whose
     * size query armed the race (its extras are visible), or 0. */
    unsigned char armed[FAKE_MAX_GPUS];
    int line;
};

struct fake_state {
    int present; /* state file exists and parsed */
    char driver[FAKE_STR];
    char nvml[FAKE_STR];
    int cuda;
    int ngpus;
    struct fake_gpu gpus[FAKE_MAX_GPUS];
    int nmigs;
    struct fake_gpu migs[FAKE_MAX_MIGS]; /* in file order; parent says whose */
    int nrules;
    struct fake_rule rules[FAKE_MAX_RULES];
    int reap; /* dead PIDs disappear */
};

/* A process counts only while it lives, when the state says "reap". */
static int proc_alive(int reap, unsigned pid)
{
    if (!reap)
        return 1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%u", pid);
    return access(path, F_OK) == 0;
}

/* A device handle is a pointer to one of these. */
struct fake_slot {
    unsigned int magic;
    char uuid[FAKE_STR];
    int index; /* current index in the state, -1 = absent (lost); a MIG device: its GPU's */
    int mig;   /* a MIG device: its index in g_state.migs; a GPU: -1 */
};
#define SLOT_MAGIC 0x4e564d4cu

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fake_state g_state;
static char *g_content;       /* raw bytes of the loaded file */
static size_t g_content_len;
static int g_content_valid;   /* g_content/g_content_len describe the last load */
static int g_broken;          /* last load had a syntax error */
static char g_error[512];     /* last syntax error message */
static int g_refcount;
static struct fake_slot g_slots[FAKE_MAX_SLOTS];
static int g_nslots;
static int g_slot_victim;

/* ------------------------------------------------------------------------ */
/* Error names                                                               */

struct code_name {
    const char *name;
    nvmlReturn_t code;
    const char *text;
};

static const struct code_name g_codes[] = {
    {"SUCCESS", NVML_SUCCESS, "Success"},
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED, "Uninitialized"},
    {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
    {"NOT_FOUND", NVML_ERROR_NOT_FOUND, "Not Found"},
    {"INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
    {"INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER, "Insufficient External Power"},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
    {"TIMEOUT", NVML_ERROR_TIMEOUT, "Timeout"},
    {"IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE, "Interrupt Request Issue"},
    {"LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"},
    {"FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
    {"CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM, "Corrupted infoROM"},
    {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
    {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
    {"OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM,
     "The operating system has blocked the request."},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH,
     "RM has detected an NVML/RM version mismatch."},
    {"IN_USE", NVML_ERROR_IN_USE, "In use by another client"},
    {"MEMORY", NVML_ERROR_MEMORY, "Insufficient Memory"},
    {"NO_DATA", NVML_ERROR_NO_DATA, "No data"},
    {"VGPU_ECC_NOT_SUPPORTED", NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
     "ECC is not supported in vGPU mode"},
    {"INSUFFICIENT_RESOURCES", NVML_ERROR_INSUFFICIENT_RESOURCES,
     "Insufficient resources"},
    {"FREQ_NOT_SUPPORTED", NVML_ERROR_FREQ_NOT_SUPPORTED, "Frequency not supported"},
    {"ARGUMENT_VERSION_MISMATCH", NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
     "Argument version mismatch"},
    {"DEPRECATED", NVML_ERROR_DEPRECATED, "Deprecated"},
    {"NOT_READY", NVML_ERROR_NOT_READY, "Not ready"},
    {"GPU_NOT_FOUND", NVML_ERROR_GPU_NOT_FOUND, "GPU not found"},
    {"INVALID_STATE", NVML_ERROR_INVALID_STATE, "Invalid state"},
    {"RESET_TYPE_NOT_SUPPORTED", NVML_ERROR_RESET_TYPE_NOT_SUPPORTED,
     "Reset type not supported"},
    {"UNKNOWN", NVML_ERROR_UNKNOWN, "Unknown Error"},
};
#define NCODES (sizeof(g_codes) / sizeof(g_codes[0]))

/* Every exported NVML function: error/grow/delay lines must name one. */
static const char *const g_functions[] = {
    "nvmlInit",
    "nvmlInit_v2",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses",
    "nvmlDeviceGetMPSComputeRunningProcesses_v2",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
};
#define NFUNCTIONS (sizeof(g_functions) / sizeof(g_functions[0]))

static int is_known_function(const char *name)
{
    for (size_t i = 0; i < NFUNCTIONS; i++)
        if (strcmp(g_functions[i], name) == 0)
            return 1;
    return 0;
}

static int function_index(const char *name)
{
    for (size_t i = 0; i < NFUNCTIONS; i++)
        if (strcmp(g_functions[i], name) == 0)
            return (int)i;
    return -1;
}

static int is_init_function(const char *name)
{
    return strcmp(name, "nvmlInit") == 0 || strcmp(name, "nvmlInit_v2") == 0 ||
           strcmp(name, "nvmlInitWithFlags") == 0;
}

static int parse_code(const char *tok, nvmlReturn_t *out)
{
    const char *name = tok;
    if (strncasecmp(name, "NVML_ERROR_", 11) == 0)
        name += 11;
    else if (strcasecmp(name, "NVML_SUCCESS") == 0)
        name = "SUCCESS";
    for (size_t i = 0; i < NCODES; i++) {
        if (strcasecmp(g_codes[i].name, name) == 0) {
            *out = g_codes[i].code;
            return 0;
        }
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(tok, &end, 10);
    if (errno == 0 && end != tok && *end == '\0' && v >= 0 && v <= 0x7fffffff) {
        *out = (nvmlReturn_t)v;
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */

static void state_free(struct fake_state *st)
{
    for (int i = 0; i < FAKE_MAX_GPUS; i++) {
        free(st->gpus[i].procs);
        st->gpus[i].procs = NULL;
    }
    for (int i = 0; i < FAKE_MAX_MIGS; i++) {
        free(st->migs[i].procs);
        st->migs[i].procs = NULL;
    }
    memset(st, 0, sizeof(*st));
}

static int set_error(char *err, size_t errlen, int line, const char *fmt, const char *arg)
{
    char msg[256];
    snprintf(msg, sizeof(msg), fmt, arg ? arg : "");
    snprintf(err, errlen, "fakenvml: state file line %d: %s", line, msg);
    return -1;
}

static int parse_uint(const char *tok, unsigned long long max, unsigned long long *out)
{
    if (tok[0] < '0' || tok[0] > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(tok, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -1;
    *out = v;
    return 0;
}

/* SIZE: integer with optional B, KiB, MiB, GiB, TiB. */
static int parse_size(const char *tok, unsigned long long *out)
{
    if (tok[0] < '0' || tok[0] > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(tok, &end, 10);
    if (errno != 0)
        return -1;
    unsigned shift;
    if (*end == '\0' || strcmp(end, "B") == 0)
        shift = 0;
    else if (strcmp(end, "KiB") == 0)
        shift = 10;
    else if (strcmp(end, "MiB") == 0)
        shift = 20;
    else if (strcmp(end, "GiB") == 0)
        shift = 30;
    else if (strcmp(end, "TiB") == 0)
        shift = 40;
    else
        return -1;
    if (shift && v > (~0ULL >> shift))
        return -1;
    v <<= shift;
    if (v == NVML_VALUE_NOT_AVAILABLE_ULL)
        return -1; /* reserved for "na" */
    *out = v;
    return 0;
}

/* FUNC[@IDX] */
static int parse_target(const char *tok, struct fake_rule *r, char *err, size_t errlen, int line)
{
    char buf[FAKE_FN + 16];
    if (strlen(tok) >= sizeof(buf))
        return set_error(err, errlen, line, "function name too long: %s", tok);
    strcpy(buf, tok);
    r->gpu = -1;
    char *at = strchr(buf, '@');
    if (at) {
        unsigned long long idx;
        *at = '\0';
        if (parse_uint(at + 1, FAKE_MAX_GPUS - 1, &idx) != 0)
            return set_error(err, errlen, line, "bad GPU index in %s", tok);
        r->gpu = (int)idx;
    }
    size_t len = strlen(buf);
    if (len == 0 || len >= FAKE_FN)
        return set_error(err, errlen, line, "bad function name %s", tok);
    if (buf[len - 1] == '*') {
        buf[len - 1] = '\0';
        if (strchr(buf, '*'))
            return set_error(err, errlen, line, "only a trailing * is allowed: %s", tok);
        r->wildcard = 1;
    } else if (!is_known_function(buf)) {
        return set_error(err, errlen, line, "unknown NVML function %s", buf);
    }
    strcpy(r->fn, buf);
    return 0;
}

/* Split a line into at most 8 tokens; quotes group blanks. */
static int tokenize(char *s, char **tok, int max, char *err, size_t errlen, int line)
{
    int n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\r')
            s++;
        if (*s == '\0' || *s == '#')
            return n;
        if (n == max)
            return set_error(err, errlen, line, "too many fields%s", NULL);
        if (*s == '"') {
            s++;
            tok[n++] = s;
            char *q = strchr(s, '"');
            if (!q)
                return set_error(err, errlen, line, "unterminated quote%s", NULL);
            *q = '\0';
            s = q + 1;
            if (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r')
                return set_error(err, errlen, line, "text after closing quote%s", NULL);
        } else {
            tok[n++] = s;
            while (*s && *s != ' ' && *s != '\t' && *s != '\r')
                s++;
            if (*s)
                *s++ = '\0';
        }
    }
}

static int add_proc(struct fake_gpu *g, const struct fake_proc *p)
{
    if (g->nprocs == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        struct fake_proc *np = realloc(g->procs, cap * sizeof(*np));
        if (!np)
            return -1;
        g->procs = np;
        g->cap = cap;
    }
    g->procs[g->nprocs++] = *p;
    return 0;
}

struct pending_proc {
    int line;
    unsigned idx;
    int mig; /* -1: on the GPU itself */
    struct fake_proc p;
};

/* The k-th MIG device of GPU idx in st, or NULL. */
static struct fake_gpu *mig_of(struct fake_state *st, int idx, int k)
{
    for (int i = 0; i < st->nmigs; i++)
        if (st->migs[i].parent == idx && k-- == 0)
            return &st->migs[i];
    return NULL;
}

struct pending_gpu_value {
    int line;
    unsigned idx;
    int reserved; /* 0: used, 1: reserved */
    unsigned long long v;
};

static int parse_state(char *text, struct fake_state *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    st->present = 1;
    strcpy(st->driver, "550.54.15");
    st->nvml[0] = '\0';
    st->cuda = 12040;

    struct pending_proc *pp = NULL;
    size_t npp = 0, cpp = 0;
    struct pending_gpu_value pv[FAKE_MAX_GPUS * 4];
    size_t npv = 0;
    struct { int line; char uuid[FAKE_STR]; nvmlReturn_t code; } lost[FAKE_MAX_GPUS];
    size_t nlost = 0;
    int rc = -1;
    int line = 0;

    char *next = NULL;
    for (char *l = text; l; l = next) {
        char *nl = strchr(l, '\n');
        next = NULL;
        if (nl) {
            *nl = '\0';
            next = nl + 1;
        }
        line++;
        char *tok[8];
        int n = tokenize(l, tok, 8, err, errlen, line);
        if (n < 0)
            goto out;
        if (n == 0)
            continue;
        const char *kw = tok[0];
        if (strcmp(kw, "driver") == 0 || strcmp(kw, "nvml") == 0) {
            if (n != 2 || strlen(tok[1]) >= 80)
                { set_error(err, errlen, line, "usage: %s VERSION", kw); goto out; }
            strcpy(kw[0] == 'd' ? st->driver : st->nvml, tok[1]);
        } else if (strcmp(kw, "mig") == 0) {
            unsigned long long idx;
            if (n < 4 || n > 5 || parse_uint(tok[1], FAKE_MAX_GPUS - 1, &idx) != 0)
                { set_error(err, errlen, line, "usage: mig IDX MIG_UUID TOTAL [\"NAME\"]%s", NULL); goto out; }
            if (st->nmigs == FAKE_MAX_MIGS)
                { set_error(err, errlen, line, "too many MIG devices%s", NULL); goto out; }
            struct fake_gpu *m = &st->migs[st->nmigs];
            if (strlen(tok[2]) == 0 || strlen(tok[2]) >= 80)
                { set_error(err, errlen, line, "bad MIG UUID %s", tok[2]); goto out; }
            for (int i = 0; i < st->nmigs; i++)
                if (strcmp(st->migs[i].uuid, tok[2]) == 0)
                    { set_error(err, errlen, line, "duplicate UUID %s", tok[2]); goto out; }
            if (parse_size(tok[3], &m->total) != 0)
                { set_error(err, errlen, line, "bad size %s", tok[3]); goto out; }
            const char *name = n == 5 ? tok[4] : "MIG 1g.10gb";
            if (strlen(name) >= FAKE_STR - 1)
                { set_error(err, errlen, line, "name too long: %s", name); goto out; }
            strcpy(m->uuid, tok[2]);
            strcpy(m->name, name);
            m->parent = (int)idx;
            st->nmigs++;
        } else if (strcmp(kw, "lost") == 0) {
            nvmlReturn_t code = NVML_ERROR_GPU_IS_LOST;
            if (n < 2 || n > 3 || strlen(tok[1]) >= FAKE_STR || (n == 3 && parse_code(tok[2], &code) != 0) ||
                code == NVML_SUCCESS)
                { set_error(err, errlen, line, "usage: lost UUID [CODE]%s", NULL); goto out; }
            if (nlost == FAKE_MAX_GPUS)
                { set_error(err, errlen, line, "too many lost lines%s", NULL); goto out; }
            lost[nlost].line = line;
            strcpy(lost[nlost].uuid, tok[1]);
            lost[nlost].code = code;
            nlost++;
        } else if (strcmp(kw, "reap") == 0) {
            st->reap = 1;
        } else if (strcmp(kw, "procdir") == 0) {
            /* its files were appended to the text by reload() */
        } else if (strcmp(kw, "cuda") == 0) {
            unsigned long long v;
            if (n != 2 || parse_uint(tok[1], 0x7fffffff, &v) != 0)
                { set_error(err, errlen, line, "usage: cuda INT (e.g. 12040)%s", NULL); goto out; }
            st->cuda = (int)v;
        } else if (strcmp(kw, "gpu") == 0) {
            if (n < 3 || n > 4)
                { set_error(err, errlen, line, "usage: gpu UUID TOTAL [\"NAME\"]%s", NULL); goto out; }
            if (st->ngpus == FAKE_MAX_GPUS)
                { set_error(err, errlen, line, "too many GPUs%s", NULL); goto out; }
            struct fake_gpu *g = &st->gpus[st->ngpus];
            if (strlen(tok[1]) == 0 || strlen(tok[1]) >= 80)
                { set_error(err, errlen, line, "bad UUID %s", tok[1]); goto out; }
            for (int i = 0; i < st->ngpus; i++)
                if (strcmp(st->gpus[i].uuid, tok[1]) == 0)
                    { set_error(err, errlen, line, "duplicate UUID %s", tok[1]); goto out; }
            if (parse_size(tok[2], &g->total) != 0)
                { set_error(err, errlen, line, "bad size %s", tok[2]); goto out; }
            const char *name = n == 4 ? tok[3] : "Tesla T4";
            if (strlen(name) >= FAKE_STR - 1)
                { set_error(err, errlen, line, "name too long: %s", name); goto out; }
            strcpy(g->uuid, tok[1]);
            strcpy(g->name, name);
            st->ngpus++;
        } else if (strcmp(kw, "used") == 0 || strcmp(kw, "reserved") == 0) {
            unsigned long long idx, v;
            if (n != 3 || parse_uint(tok[1], FAKE_MAX_GPUS - 1, &idx) != 0 ||
                parse_size(tok[2], &v) != 0)
                { set_error(err, errlen, line, "usage: %s IDX SIZE", kw); goto out; }
            if (npv == sizeof(pv) / sizeof(pv[0]))
                { set_error(err, errlen, line, "too many %s lines", kw); goto out; }
            pv[npv].line = line;
            pv[npv].idx = (unsigned)idx;
            pv[npv].reserved = kw[0] == 'r';
            pv[npv].v = v;
            npv++;
        } else if (strcmp(kw, "proc") == 0) {
            unsigned long long idx, pid, migk = 0;
            struct fake_proc p = {0, 0, KIND_COMPUTE};
            char *colon = n >= 2 ? strchr(tok[1], ':') : NULL;
            if (colon)
                *colon++ = '\0';
            if (n < 4 || n > 5 || parse_uint(tok[1], FAKE_MAX_GPUS - 1, &idx) != 0 ||
                (colon && parse_uint(colon, FAKE_MAX_MIGS_PER_GPU - 1, &migk) != 0) ||
                parse_uint(tok[2], 0xffffffffULL, &pid) != 0)
                { set_error(err, errlen, line, "usage: proc IDX[:MIG] PID SIZE|na [KINDS]%s", NULL); goto out; }
            p.pid = (unsigned)pid;
            if (strcmp(tok[3], "na") == 0)
                p.used = NVML_VALUE_NOT_AVAILABLE_ULL;
            else if (parse_size(tok[3], &p.used) != 0)
                { set_error(err, errlen, line, "bad size %s", tok[3]); goto out; }
            if (n == 5) {
                p.kinds = 0;
                char kinds[64];
                if (strlen(tok[4]) >= sizeof(kinds))
                    { set_error(err, errlen, line, "bad kinds %s", tok[4]); goto out; }
                strcpy(kinds, tok[4]);
                char *ks = NULL;
                for (char *k = strtok_r(kinds, ",", &ks); k; k = strtok_r(NULL, ",", &ks)) {
                    if (strcmp(k, "compute") == 0)
                        p.kinds |= KIND_COMPUTE;
                    else if (strcmp(k, "graphics") == 0)
                        p.kinds |= KIND_GRAPHICS;
                    else if (strcmp(k, "mps") == 0)
                        p.kinds |= KIND_MPS;
                    else
                        { set_error(err, errlen, line, "unknown process kind %s", k); goto out; }
                }
                if (!p.kinds)
                    { set_error(err, errlen, line, "empty kinds%s", NULL); goto out; }
            }
            if (npp == cpp) {
                size_t c = cpp ? cpp * 2 : 16;
                struct pending_proc *np = realloc(pp, c * sizeof(*np));
                if (!np)
                    { set_error(err, errlen, line, "out of memory%s", NULL); goto out; }
                pp = np;
                cpp = c;
            }
            pp[npp].line = line;
            pp[npp].idx = (unsigned)idx;
            pp[npp].mig = colon ? (int)migk : -1;
            pp[npp].p = p;
            npp++;
        } else if (strcmp(kw, "error") == 0 || strcmp(kw, "grow") == 0 ||
                   strcmp(kw, "delay") == 0) {
            if (st->nrules == FAKE_MAX_RULES)
                { set_error(err, errlen, line, "too many rules%s", NULL); goto out; }
            struct fake_rule *r = &st->rules[st->nrules];
            memset(r, 0, sizeof(*r));
            r->line = line;
            if (n < 3)
                { set_error(err, errlen, line, "too few fields for %s", kw); goto out; }
            if (parse_target(tok[1], r, err, errlen, line) != 0)
                goto out;
            if (kw[0] == 'e') {
                r->type = RULE_ERROR;
                r->remaining = -1;
                if (n > 4 || parse_code(tok[2], &r->code) != 0)
                    { set_error(err, errlen, line, "usage: error FUNC[@IDX] CODE [COUNT] (bad code %s)", tok[2]); goto out; }
                if (n == 4) {
                    unsigned long long c;
                    if (parse_uint(tok[3], 0x7fffffff, &c) != 0)
                        { set_error(err, errlen, line, "bad count %s", tok[3]); goto out; }
                    r->remaining = (long)c;
                }
            } else if (kw[0] == 'g') {
                unsigned long long v;
                r->type = RULE_GROW;
                r->grow_used = 1ULL << 20;
                if (n > 4 || parse_uint(tok[2], 100000, &v) != 0)
                    { set_error(err, errlen, line, "usage: grow FUNC[@IDX] N [SIZE|na]%s", NULL); goto out; }
                r->n = (unsigned)v;
                if (n == 4) {
                    if (strcmp(tok[3], "na") == 0)
                        r->grow_used = NVML_VALUE_NOT_AVAILABLE_ULL;
                    else if (parse_size(tok[3], &r->grow_used) != 0)
                        { set_error(err, errlen, line, "bad size %s", tok[3]); goto out; }
                }
            } else {
                unsigned long long v;
                r->type = RULE_DELAY;
                if (n != 3 || parse_uint(tok[2], 600000, &v) != 0)
                    { set_error(err, errlen, line, "usage: delay FUNC[@IDX] MILLISECONDS%s", NULL); goto out; }
                r->n = (unsigned)v;
            }
            st->nrules++;
        } else {
            set_error(err, errlen, line, "unknown directive %s", kw);
            goto out;
        }
    }

    for (size_t i = 0; i < npv; i++) {
        if ((int)pv[i].idx >= st->ngpus)
            { set_error(err, errlen, pv[i].line, "no gpu line for this index%s", NULL); goto out; }
        if (pv[i].reserved)
            st->gpus[pv[i].idx].reserved = pv[i].v;
        else
            st->gpus[pv[i].idx].base_used = pv[i].v;
    }
    for (int i = 0; i < st->nmigs; i++) {
        int parent = st->migs[i].parent;
        if (parent >= st->ngpus)
            { set_error(err, errlen, 0, "mig line for GPU %s without a gpu line", "?"); goto out; }
        if (st->gpus[parent].nmig == FAKE_MAX_MIGS_PER_GPU)
            { set_error(err, errlen, 0, "more than 7 MIG devices on one GPU%s", NULL); goto out; }
        st->gpus[parent].nmig++;
    }
    for (int i = 0; i < st->ngpus; i++)
        st->gpus[i].parent = -1;
    for (size_t i = 0; i < npp; i++) {
        if ((int)pp[i].idx >= st->ngpus)
            { set_error(err, errlen, pp[i].line, "no gpu line for this index%s", NULL); goto out; }
        struct fake_gpu *target = &st->gpus[pp[i].idx];
        if (pp[i].mig >= 0 && !(target = mig_of(st, (int)pp[i].idx, pp[i].mig)))
            { set_error(err, errlen, pp[i].line, "no mig line for this MIG index%s", NULL); goto out; }
        if (add_proc(target, &pp[i].p) != 0)
            { set_error(err, errlen, pp[i].line, "out of memory%s", NULL); goto out; }
    }
    for (size_t i = 0; i < nlost; i++) {
        int found = 0;
        for (int k = 0; k < st->ngpus; k++) {
            if (strcmp(st->gpus[k].uuid, lost[i].uuid) == 0) {
                st->gpus[k].lost = lost[i].code;
                found = 1;
            }
        }
        if (!found)
            { set_error(err, errlen, lost[i].line, "no gpu line for lost %s", lost[i].uuid); goto out; }
    }
    for (int i = 0; i < st->nrules; i++) {
        if (st->rules[i].gpu >= st->ngpus)
            { set_error(err, errlen, st->rules[i].line, "no gpu line for index in %s rule", st->rules[i].fn); goto out; }
    }
    if (st->nvml[0] == '\0')
        snprintf(st->nvml, sizeof(st->nvml), "12.%.80s", st->driver);
    rc = 0;
out:
    free(pp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Slots (device handles)                                                    */

static struct fake_slot *slot_for_uuid(const char *uuid)
{
    for (int i = 0; i < g_nslots; i++)
        if (strcmp(g_slots[i].uuid, uuid) == 0)
            return &g_slots[i];
    struct fake_slot *s = NULL;
    if (g_nslots < FAKE_MAX_SLOTS) {
        s = &g_slots[g_nslots++];
    } else {
        /* Recycle a slot whose GPU is absent. */
        for (int k = 0; k < FAKE_MAX_SLOTS; k++) {
            int i = (g_slot_victim + k) % FAKE_MAX_SLOTS;
            if (g_slots[i].index < 0) {
                s = &g_slots[i];
                g_slot_victim = i + 1;
                break;
            }
        }
        if (!s)
            return NULL; /* cannot happen: at most FAKE_MAX_GPUS present */
    }
    s->magic = SLOT_MAGIC;
    strcpy(s->uuid, uuid);
    s->index = -1;
    s->mig = -1;
    return s;
}

static void slots_update(void)
{
    for (int i = 0; i < g_nslots; i++)
        g_slots[i].index = -1;
    if (!g_state.present)
        return;
    /* Existing slots first, so recycling never takes a present GPU's slot. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < g_state.ngpus; i++) {
            const char *uuid = g_state.gpus[i].uuid;
            struct fake_slot *s = NULL;
            for (int k = 0; k < g_nslots && !s; k++)
                if (strcmp(g_slots[k].uuid, uuid) == 0)
                    s = &g_slots[k];
            if (!s && pass == 1)
                s = slot_for_uuid(uuid);
            if (s) {
                s->index = i;
                s->mig = -1;
            }
        }
        for (int i = 0; i < g_state.nmigs; i++) {
            const char *uuid = g_state.migs[i].uuid;
            struct fake_slot *s = NULL;
            for (int k = 0; k < g_nslots && !s; k++)
                if (strcmp(g_slots[k].uuid, uuid) == 0)
                    s = &g_slots[k];
            if (!s && pass == 1)
                s = slot_for_uuid(uuid);
            if (s) {
                s->index = g_state.migs[i].parent;
                s->mig = i;
            }
        }
    }
}

/* Returns the slot for a handle, or NULL when the pointer is not one of ours. */
static struct fake_slot *slot_from_handle(const void *h)
{
    uintptr_t p = (uintptr_t)h, base = (uintptr_t)&g_slots[0];
    if (!h || p < base || p >= (uintptr_t)&g_slots[g_nslots])
        return NULL;
    if ((p - base) % sizeof(struct fake_slot) != 0)
        return NULL;
    struct fake_slot *s = (struct fake_slot *)h;
    return s->magic == SLOT_MAGIC ? s : NULL;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            if (ferror(f)) {
                free(buf);
                buf = NULL;
            }
            break;
        }
        if (cap >= FAKE_MAX_FILE) {
            free(buf);
            buf = NULL;
            break;
        }
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Append the files of a "procdir DIR" line, in name order, to text. Only
 * "proc" lines are kept from them. */
static char *append_procdir(char *text, size_t *len)
{
    const char *line = text;
    const char *found = NULL;
    while (line && *line) {
        if (strncmp(line, "procdir ", 8) == 0) {
            found = line + 8;
            break;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!found)
        return text;
    char dir[512];
    size_t dl = strcspn(found, " \t\r\n");
    if (dl == 0 || dl >= sizeof(dir))
        return text;
    memcpy(dir, found, dl);
    dir[dl] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return text;
    char *names[1024];
    size_t nn = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && nn < sizeof(names) / sizeof(names[0])) {
        if (e->d_name[0] == '.')
            continue;
        names[nn] = strdup(e->d_name);
        if (names[nn])
            nn++;
    }
    closedir(d);
    qsort(names, nn, sizeof(names[0]), name_cmp);
    for (size_t i = 0; i < nn; i++) {
        char path[1100];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        free(names[i]);
        size_t fl = 0;
        char *more = read_file(path, &fl);
        if (!more)
            continue; /* the writer renamed or removed it meanwhile */
        char *cur = more;
        while (cur && *cur) {
            char *nl = strchr(cur, '\n');
            size_t ll = nl ? (size_t)(nl - cur) : strlen(cur);
            if (strncmp(cur, "proc ", 5) == 0 && *len + ll + 2 < FAKE_MAX_FILE) {
                char *nt = realloc(text, *len + ll + 2);
                if (nt) {
                    text = nt;
                    text[(*len)++] = '\n';
                    memcpy(text + *len, cur, ll);
                    *len += ll;
                    text[*len] = '\0';
                }
            }
            cur = nl ? nl + 1 : NULL;
        }
        free(more);
    }
    return text;
}

/* Caller holds g_lock. */
static void reload(void)
{
    const char *path = getenv("FAKE_NVML_STATE");
    size_t len = 0;
    char *text = (path && *path) ? read_file(path, &len) : NULL;
    if (text)
        text = append_procdir(text, &len);

    if (!text) {
        if (g_content_valid && !g_content) /* already "absent" */
            return;
        state_free(&g_state);
        free(g_content);
        g_content = NULL;
        g_content_len = 0;
        g_content_valid = 1;
        g_broken = 0;
        slots_update();
        return;
    }
    if (g_content_valid && g_content && g_content_len == len &&
        memcmp(g_content, text, len) == 0) {
        free(text);
        return;
    }
    free(g_content);
    g_content = text;
    g_content_len = len;
    g_content_valid = 1;

    char *work = malloc(len + 1);
    static struct fake_state next; /* large: keep it off the stack */
    char err[sizeof(g_error)] = "";
    int ok = 0;
    if (work) {
        memcpy(work, text, len + 1);
        if (memchr(text, '\0', len))
            set_error(err, sizeof(err), 0, "file contains a NUL byte%s", NULL);
        else
            ok = parse_state(work, &next, err, sizeof(err)) == 0;
        free(work);
    } else {
        snprintf(err, sizeof(err), "fakenvml: out of memory");
    }
    state_free(&g_state);
    if (ok) {
        g_state = next;
        memset(&next, 0, sizeof(next)); /* g_state owns the proc arrays now */
        g_broken = 0;
        g_error[0] = '\0';
    } else {
        state_free(&next);
        g_broken = 1;
        snprintf(g_error, sizeof(g_error), "%s", err);
        fprintf(stderr, "%s\n", g_error);
    }
    slots_update();
}

/* ------------------------------------------------------------------------ */
/* Call plumbing                                                             */

struct call {
    const char *fn;
    unsigned delay_ms;
};

static int rule_matches(const struct fake_rule *r, const char *fn, int gpu)
{
    if (r->gpu >= 0 && r->gpu != gpu)
        return 0;
    if (r->wildcard) {
        if (strcmp(fn, "nvmlShutdown") == 0 || strcmp(fn, "nvmlErrorString") == 0)
            return 0;
        return strncmp(fn, r->fn, strlen(r->fn)) == 0;
    }
    if (strcmp(r->fn, fn) == 0)
        return 1;
    return is_init_function(r->fn) && is_init_function(fn);
}

/* Injected error (and delay) for fn on GPU index gpu (-1: system call). */
static nvmlReturn_t inject(struct call *c, int gpu)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    int have_delay = 0, have_error = 0;
    for (int i = 0; i < g_state.nrules; i++) {
        struct fake_rule *r = &g_state.rules[i];
        if (!rule_matches(r, c->fn, gpu))
            continue;
        if (r->type == RULE_DELAY && !have_delay) {
            c->delay_ms = r->n;
            have_delay = 1;
        } else if (r->type == RULE_ERROR && !have_error && r->remaining != 0) {
            if (r->remaining > 0)
                r->remaining--;
            rc = r->code;
            have_error = 1;
        }
    }
    return rc;
}

/* Lock, reload, check that the library is initialized. */
static nvmlReturn_t begin(struct call *c, const char *fn)
{
    c->fn = fn;
    c->delay_ms = 0;
    pthread_mutex_lock(&g_lock);
    reload();
    if (g_refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (g_broken)
        return NVML_ERROR_UNKNOWN;
    if (!g_state.present)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    return NVML_SUCCESS;
}

/* Resolve a device handle; injects errors for that GPU. */
static nvmlReturn_t resolve_device(const void *handle, struct fake_slot **slot, struct fake_gpu **gpu)
{
    struct fake_slot *s = slot_from_handle(handle);
    if (!s)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (s->index < 0 || s->index >= g_state.ngpus)
        return NVML_ERROR_GPU_IS_LOST;
    if (s->mig >= g_state.nmigs)
        return NVML_ERROR_GPU_IS_LOST;
    if (g_state.gpus[s->index].lost != NVML_SUCCESS)
        return g_state.gpus[s->index].lost;
    if (slot)
        *slot = s;
    if (gpu)
        *gpu = s->mig >= 0 ? &g_state.migs[s->mig] : &g_state.gpus[s->index];
    return NVML_SUCCESS;
}

static nvmlReturn_t end(struct call *c, nvmlReturn_t rc)
{
    pthread_mutex_unlock(&g_lock);
    if (c->delay_ms) {
        struct timespec ts = {(time_t)(c->delay_ms / 1000), (long)(c->delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    return rc;
}

static nvmlReturn_t copy_string(char *dst, unsigned int length, const char *src)
{
    size_t n = strlen(src);
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((size_t)length < n + 1)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Init / shutdown / errors                                                  */

static nvmlReturn_t do_init(const char *fn)
{
    struct call c = {fn, 0};
    pthread_mutex_lock(&g_lock);
    reload();
    nvmlReturn_t rc;
    if (g_broken)
        rc = NVML_ERROR_UNKNOWN;
    else if (!g_state.present)
        rc = NVML_ERROR_DRIVER_NOT_LOADED;
    else
        rc = inject(&c, -1);
    if (rc == NVML_SUCCESS)
        g_refcount++;
    return end(&c, rc);
}

nvmlReturn_t nvmlInit(void) { return do_init("nvmlInit"); }
nvmlReturn_t nvmlInit_v2(void) { return do_init("nvmlInit_v2"); }

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NVML_INIT_FLAG_NO_GPUS / NO_ATTACH: zero GPUs is always fine here */
    return do_init("nvmlInitWithFlags");
}

nvmlReturn_t nvmlShutdown(void)
{
    struct call c = {"nvmlShutdown", 0};
    pthread_mutex_lock(&g_lock);
    reload();
    nvmlReturn_t rc = NVML_SUCCESS;
    if (g_refcount == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else if (g_state.present && !g_broken)
        rc = inject(&c, -1);
    if (rc == NVML_SUCCESS)
        g_refcount--;
    return end(&c, rc);
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    for (size_t i = 0; i < NCODES; i++)
        if (g_codes[i].code == result)
            return g_codes[i].text;
    return "Unknown Error";
}

/* Test hooks (not part of NVML). */
void fakeNvmlReset(void)
{
    pthread_mutex_lock(&g_lock);
    g_refcount = 0;
    state_free(&g_state);
    free(g_content);
    g_content = NULL;
    g_content_len = 0;
    g_content_valid = 0;
    g_broken = 0;
    g_error[0] = '\0';
    slots_update();
    pthread_mutex_unlock(&g_lock);
}

const char *fakeNvmlStateError(void)
{
    static char copy[sizeof(g_error)];
    pthread_mutex_lock(&g_lock);
    reload();
    memcpy(copy, g_error, sizeof(copy));
    pthread_mutex_unlock(&g_lock);
    return copy;
}

/* ------------------------------------------------------------------------ */
/* System queries                                                            */

static nvmlReturn_t system_string(const char *fn, char *buf, unsigned int length, int which)
{
    struct call c;
    nvmlReturn_t rc = begin(&c, fn);
    if (rc == NVML_SUCCESS && !buf)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = inject(&c, -1);
    if (rc == NVML_SUCCESS)
        rc = copy_string(buf, length, which ? g_state.nvml : g_state.driver);
    return end(&c, rc);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    return system_string("nvmlSystemGetDriverVersion", version, length, 0);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    return system_string("nvmlSystemGetNVMLVersion", version, length, 1);
}

static nvmlReturn_t cuda_version(const char *fn, int *out)
{
    struct call c;
    nvmlReturn_t rc = begin(&c, fn);
    if (rc == NVML_SUCCESS && !out)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = inject(&c, -1);
    if (rc == NVML_SUCCESS)
        *out = g_state.cuda;
    return end(&c, rc);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion", v);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion_v2", v);
}

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */

static nvmlReturn_t device_count(const char *fn, unsigned int *count)
{
    struct call c;
    nvmlReturn_t rc = begin(&c, fn);
    if (rc == NVML_SUCCESS && !count)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = inject(&c, -1);
    if (rc == NVML_SUCCESS)
        *count = (unsigned)g_state.ngpus;
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return device_count("nvmlDeviceGetCount", count);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    return device_count("nvmlDeviceGetCount_v2", count);
}

static nvmlReturn_t handle_by_index(const char *fn, unsigned int index, void **device_out)
{
    struct call c;
    nvmlReturn_t rc = begin(&c, fn);
    if (rc == NVML_SUCCESS && (!device_out || index >= (unsigned)g_state.ngpus))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = inject(&c, (int)index);
    if (rc == NVML_SUCCESS)
        rc = g_state.gpus[index].lost;
    if (rc == NVML_SUCCESS) {
        struct fake_slot *s = slot_for_uuid(g_state.gpus[index].uuid);
        if (!s)
            rc = NVML_ERROR_UNKNOWN;
        else
            *device_out = s;
    }
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, void **device)
{
    return handle_by_index("nvmlDeviceGetHandleByIndex", index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device)
{
    return handle_by_index("nvmlDeviceGetHandleByIndex_v2", index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device_out)
{
    struct call c;
    nvmlReturn_t rc = begin(&c, "nvmlDeviceGetHandleByUUID");
    if (rc == NVML_SUCCESS && (!uuid || !device_out))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    int index = -1;
    if (rc == NVML_SUCCESS) {
        for (int i = 0; i < g_state.ngpus; i++)
            if (strcmp(g_state.gpus[i].uuid, uuid) == 0)
                index = i;
        rc = inject(&c, index);
        if (rc == NVML_SUCCESS && index < 0)
            rc = NVML_ERROR_NOT_FOUND;
        if (rc == NVML_SUCCESS)
            rc = g_state.gpus[index].lost;
    }
    if (rc == NVML_SUCCESS) {
        struct fake_slot *s = slot_for_uuid(uuid);
        if (!s)
            rc = NVML_ERROR_UNKNOWN;
        else
            *device_out = s;
    }
    return end(&c, rc);
}

/* Common prologue for functions taking a device and one output pointer. */
#define DEVICE_PROLOGUE(name, handle, outptr)                 \
    struct call c;                                            \
    struct fake_slot *slot = NULL;                            \
    struct fake_gpu *gpu = NULL;                              \
    nvmlReturn_t rc = begin(&c, name);                        \
    if (rc == NVML_SUCCESS)                                   \
        rc = resolve_device((handle), &slot, &gpu);               \
    if (rc == NVML_SUCCESS && !(outptr))                      \
        rc = NVML_ERROR_INVALID_ARGUMENT;                     \
    if (rc == NVML_SUCCESS)                                   \
        rc = inject(&c, slot->index);

nvmlReturn_t nvmlDeviceGetIndex(void *device, unsigned int *index)
{
    DEVICE_PROLOGUE("nvmlDeviceGetIndex", device, index)
    if (rc == NVML_SUCCESS)
        *index = (unsigned)slot->index;
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length)
{
    DEVICE_PROLOGUE("nvmlDeviceGetUUID", device, uuid)
    if (rc == NVML_SUCCESS)
        rc = copy_string(uuid, length, gpu->uuid);
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetName(void *device, char *name, unsigned int length)
{
    DEVICE_PROLOGUE("nvmlDeviceGetName", device, name)
    if (rc == NVML_SUCCESS)
        rc = copy_string(name, length, gpu->name);
    return end(&c, rc);
}

/* allocated = base used + processes (na = 0), excluding reserved; a GPU in MIG
 * mode adds what its MIG devices have allocated */
static unsigned long long gpu_allocated(const struct fake_gpu *g)
{
    unsigned long long sum = g->base_used;
    for (size_t i = 0; i < g->nprocs; i++) {
        unsigned long long u = g->procs[i].used;
        if (u == NVML_VALUE_NOT_AVAILABLE_ULL || !proc_alive(g_state.reap, g->procs[i].pid))
            continue;
        sum = (sum + u < sum) ? ~0ULL - 1 : sum + u;
    }
    if (g->parent < 0 && g->nmig > 0) {
        int idx = (int)(g - g_state.gpus);
        for (int i = 0; i < g_state.nmigs; i++) {
            if (g_state.migs[i].parent != idx)
                continue;
            unsigned long long u = gpu_allocated(&g_state.migs[i]);
            sum = (sum + u < sum) ? ~0ULL - 1 : sum + u;
        }
    }
    return sum;
}

static unsigned long long sat_add(unsigned long long a, unsigned long long b)
{
    return a + b < a ? ~0ULL - 1 : a + b;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *memory)
{
    DEVICE_PROLOGUE("nvmlDeviceGetMemoryInfo", device, memory)
    if (rc == NVML_SUCCESS) {
        unsigned long long used = sat_add(gpu_allocated(gpu), gpu->reserved);
        memory->total = gpu->total;
        memory->used = used;
        memory->free = used >= gpu->total ? 0 : gpu->total - used;
    }
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *device, nvmlMemory_v2_t *memory)
{
    DEVICE_PROLOGUE("nvmlDeviceGetMemoryInfo_v2", device, memory)
    if (rc == NVML_SUCCESS && memory->version != nvmlMemory_v2)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS) {
        unsigned long long alloc = gpu_allocated(gpu);
        unsigned long long all = sat_add(alloc, gpu->reserved);
        memory->total = gpu->total;
        memory->reserved = gpu->reserved;
        memory->used = alloc;
        memory->free = all >= gpu->total ? 0 : gpu->total - all;
    }
    return end(&c, rc);
}

/* One entry of a process list as the driver fills it. */
struct entry {
    unsigned pid;
    unsigned long long used;
    unsigned gi, ci; /* GPU/compute instance ids, NVML_VALUE_NOT_AVAILABLE_UINT if not MIG */
};

/* Append g's live processes of this kind to *out (grown as needed). */
static int collect(const struct fake_gpu *g, int kind, int na, unsigned gi, struct entry **out,
                   size_t *n, size_t *cap)
{
    for (size_t i = 0; i < g->nprocs; i++) {
        const struct fake_proc *p = &g->procs[i];
        if (!(p->kinds & kind) || !proc_alive(g_state.reap, p->pid))
            continue;
        if (*n == *cap) {
            size_t c = *cap ? *cap * 2 : 16;
            struct entry *ne = realloc(*out, c * sizeof(*ne));
            if (!ne)
                return -1;
            *out = ne;
            *cap = c;
        }
        struct entry *e = &(*out)[(*n)++];
        e->pid = p->pid;
        e->used = na ? NVML_VALUE_NOT_AVAILABLE_ULL : p->used;
        e->gi = gi;
        e->ci = gi == NVML_VALUE_NOT_AVAILABLE_UINT ? gi : 0;
    }
    return 0;
}

/* The process-list protocol of the real driver:
 *   no processes              -> *count = 0, SUCCESS (infos may be NULL)
 *   infos NULL or *count < n  -> *count = n, INSUFFICIENT_SIZE
 *   otherwise                 -> fill n entries, *count = n, SUCCESS
 * A MIG device lists its own processes (with their instance ids); a GPU in MIG
 * mode lists every instance's processes with usage not available. */
static nvmlReturn_t process_list(const char *fn, void *device, unsigned int *count, void *infos,
                                 int kind, int v1)
{
    DEVICE_PROLOGUE(fn, device, count)
    if (rc != NVML_SUCCESS)
        return end(&c, rc);

    int idx = slot->index;
    struct entry *list = NULL;
    size_t n = 0, cap = 0;
    int bad = 0;
    if (slot->mig >= 0) {
        int k = 0; /* its MIG index on the parent */
        for (int i = 0; i < slot->mig; i++)
            k += g_state.migs[i].parent == idx;
        bad = collect(gpu, kind, 0, (unsigned)k, &list, &n, &cap);
    } else {
        bad = collect(gpu, kind, 0, NVML_VALUE_NOT_AVAILABLE_UINT, &list, &n, &cap);
        for (int i = 0, k = 0; i < g_state.nmigs && !bad; i++)
            if (g_state.migs[i].parent == idx)
                bad = collect(&g_state.migs[i], kind, 1, (unsigned)k++, &list, &n, &cap);
    }
    if (bad) {
        free(list);
        return end(&c, NVML_ERROR_MEMORY);
    }

    /* grow rules armed by an earlier INSUFFICIENT_SIZE answer */
    struct fake_rule *grow = NULL;
    for (int i = 0; i < g_state.nrules; i++) {
        struct fake_rule *r = &g_state.rules[i];
        if (r->type == RULE_GROW && rule_matches(r, fn, idx)) {
            grow = r;
            break;
        }
    }
    unsigned char me = (unsigned char)(function_index(fn) + 1);
    size_t extra = (grow && grow->armed[idx] == me) ? grow->n : 0;
    size_t total = n + extra;

    if (total == 0) {
        *count = 0;
        free(list);
        return end(&c, NVML_SUCCESS);
    }
    if (!infos || *count < total) {
        *count = (unsigned)total;
        if (grow)
            grow->armed[idx] = me;
        free(list);
        return end(&c, NVML_ERROR_INSUFFICIENT_SIZE);
    }

    for (size_t k = 0; k < total; k++) {
        struct entry e;
        if (k < n) {
            e = list[k];
        } else {
            e.pid = FAKE_GROW_PID_BASE + (unsigned)(k - n);
            e.used = grow->grow_used;
            e.gi = e.ci = NVML_VALUE_NOT_AVAILABLE_UINT;
        }
        if (v1) {
            nvmlProcessInfo_v1_t *o = (nvmlProcessInfo_v1_t *)infos + k;
            o->pid = e.pid;
            o->usedGpuMemory = e.used;
        } else {
            nvmlProcessInfo_v2_t *o = (nvmlProcessInfo_v2_t *)infos + k;
            o->pid = e.pid;
            o->usedGpuMemory = e.used;
            o->gpuInstanceId = e.gi;
            o->computeInstanceId = e.ci;
        }
    }
    free(list);
    *count = (unsigned)total;
    if (grow)
        grow->armed[idx] = 0;
    return end(&c, NVML_SUCCESS);
}

#define PROCESS_FN(sym, kind, v1)                                                  \
    nvmlReturn_t sym(void *device, unsigned int *infoCount, void *infos)          \
    {                                                                              \
        return process_list(#sym, device, infoCount, infos, kind, v1);             \
    }

PROCESS_FN(nvmlDeviceGetComputeRunningProcesses, KIND_COMPUTE, 1)
PROCESS_FN(nvmlDeviceGetComputeRunningProcesses_v2, KIND_COMPUTE, 0)
PROCESS_FN(nvmlDeviceGetComputeRunningProcesses_v3, KIND_COMPUTE, 0)
PROCESS_FN(nvmlDeviceGetGraphicsRunningProcesses, KIND_GRAPHICS, 1)
PROCESS_FN(nvmlDeviceGetGraphicsRunningProcesses_v2, KIND_GRAPHICS, 0)
PROCESS_FN(nvmlDeviceGetGraphicsRunningProcesses_v3, KIND_GRAPHICS, 0)
PROCESS_FN(nvmlDeviceGetMPSComputeRunningProcesses, KIND_MPS, 1)
PROCESS_FN(nvmlDeviceGetMPSComputeRunningProcesses_v2, KIND_MPS, 0)
PROCESS_FN(nvmlDeviceGetMPSComputeRunningProcesses_v3, KIND_MPS, 0)

/* ------------------------------------------------------------------------ */
/* MIG                                                                       */

nvmlReturn_t nvmlDeviceGetMigMode(void *device, unsigned int *currentMode,
                                  unsigned int *pendingMode)
{
    DEVICE_PROLOGUE("nvmlDeviceGetMigMode", device, currentMode && pendingMode)
    if (rc == NVML_SUCCESS && (slot->mig >= 0 || gpu->nmig == 0))
        rc = NVML_ERROR_NOT_SUPPORTED; /* a MIG device itself, or a GPU without MIG */
    if (rc == NVML_SUCCESS)
        *currentMode = *pendingMode = 1; /* NVML_DEVICE_MIG_ENABLE */
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *device, unsigned int *isMigDevice)
{
    DEVICE_PROLOGUE("nvmlDeviceIsMigDeviceHandle", device, isMigDevice)
    if (rc == NVML_SUCCESS)
        *isMigDevice = slot->mig >= 0;
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *device, unsigned int *count)
{
    DEVICE_PROLOGUE("nvmlDeviceGetMaxMigDeviceCount", device, count)
    if (rc == NVML_SUCCESS)
        *count = (slot->mig < 0 && gpu->nmig > 0) ? FAKE_MAX_MIGS_PER_GPU : 0;
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *device, unsigned int index,
                                                 void **migDevice)
{
    DEVICE_PROLOGUE("nvmlDeviceGetMigDeviceHandleByIndex", device, migDevice)
    if (rc == NVML_SUCCESS && (slot->mig >= 0 || gpu->nmig == 0))
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && index >= FAKE_MAX_MIGS_PER_GPU)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    struct fake_gpu *m = NULL;
    if (rc == NVML_SUCCESS && !(m = mig_of(&g_state, slot->index, (int)index)))
        rc = NVML_ERROR_NOT_FOUND; /* no MIG device in that slot */
    if (rc == NVML_SUCCESS) {
        struct fake_slot *ms = slot_for_uuid(m->uuid);
        if (!ms) {
            rc = NVML_ERROR_UNKNOWN;
        } else {
            ms->index = slot->index;
            ms->mig = (int)(m - g_state.migs);
            *migDevice = ms;
        }
    }
    return end(&c, rc);
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *migDevice, void **device)
{
    DEVICE_PROLOGUE("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice, device)
    if (rc == NVML_SUCCESS && slot->mig < 0)
        rc = NVML_ERROR_INVALID_ARGUMENT; /* not a MIG device */
    if (rc == NVML_SUCCESS) {
        struct fake_slot *ps = slot_for_uuid(g_state.gpus[slot->index].uuid);
        if (!ps)
            rc = NVML_ERROR_UNKNOWN;
        else
            *device = ps;
    }
    return end(&c, rc);
}
