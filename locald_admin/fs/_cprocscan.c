/* The in-use check's per-process scan of /proc in C:
 * locald_admin.fs._cprocscan.
 *
 * The same scan as procscan.scan (the reference; read it first), for the
 * part that costs per process: for every numeric entry of the proc
 * directory, the owner of <pid> (fstatat), and unless that owner is to be
 * skipped (only counted), the first bytes of <pid>/mountinfo (the first
 * mount id names the process' mount namespace); for an owner other than
 * root, <pid>/uid_map, until a process of
 * that owner in that namespace is in the initial user namespace.  What it
 * returns is grouped by (namespace, owner), so that the Python side does
 * per distinct pair what it would otherwise do per process.
 *
 *   scan(proc_path: bytes, skip: sorted tuple of uids)
 *       -> (processes, skipped, [(first_id, owner, pid, initial), ...])
 *
 * one tuple per distinct (first_id, owner), in the order first seen; pid
 * is the first process seen of that pair, initial whether one of its
 * processes (looked at until one is) is in the initial user namespace.
 * The GIL is released for the scan.  Nothing is followed but the proc
 * directory's own entries, every open is relative to its fd, and every
 * buffer is bounded.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HEAD 64          /* bytes of a mountinfo read for its first mount id (procscan.HEAD) */
#define UID_MAP_MAX 256  /* bytes of a uid_map read (procscan.in_initial_user_namespace) */
#define DENTS 32768

struct dirent64_ {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

typedef struct {
    unsigned long long first;
    unsigned int owner;
    long pid;
    int initial;
} Pair;

typedef struct {
    Pair *pairs;
    size_t n, cap;
    size_t *slots;  /* open addressing: index + 1, 0 empty */
    size_t nslots;
    long long processes, skipped;
    const unsigned int *skip;  /* owners only counted, sorted */
    size_t nskip;
} Scan;

static int
skipped_owner(const Scan *s, unsigned int owner)
{
    size_t lo = 0, hi = s->nskip;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->skip[mid] == owner)
            return 1;
        if (s->skip[mid] < owner)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static size_t
hash_pair(unsigned long long first, unsigned int owner)
{
    uint64_t h = first * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)owner * 0xC2B2AE3D27D4EB4FULL);
    return (size_t)(h ^ (h >> 29));
}

static int
grow(Scan *s)
{
    size_t nslots = s->nslots ? s->nslots * 2 : 64;
    size_t *slots = calloc(nslots, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < s->n; i++) {
        size_t j = hash_pair(s->pairs[i].first, s->pairs[i].owner) & (nslots - 1);
        while (slots[j])
            j = (j + 1) & (nslots - 1);
        slots[j] = i + 1;
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = nslots;
    return 0;
}

/* The pair (first, owner): its index, a new one made if need be; -1 no memory. */
static long
pair_index(Scan *s, unsigned long long first, unsigned int owner, long pid)
{
    if ((s->n + 1) * 2 > s->nslots && grow(s) < 0)
        return -1;
    size_t j = hash_pair(first, owner) & (s->nslots - 1);
    while (s->slots[j]) {
        Pair *p = &s->pairs[s->slots[j] - 1];
        if (p->first == first && p->owner == owner)
            return (long)(s->slots[j] - 1);
        j = (j + 1) & (s->nslots - 1);
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        Pair *pairs = realloc(s->pairs, cap * sizeof *pairs);
        if (!pairs)
            return -1;
        s->pairs = pairs;
        s->cap = cap;
    }
    s->pairs[s->n] = (Pair){first, owner, pid, 0};
    s->slots[j] = ++s->n;
    return (long)(s->n - 1);
}

/* The first mount id of a mountinfo's first bytes (procscan.first_mount_id):
 * 1 and *out, or 0 when they do not start with one (at most 19 digits). */
static int
first_mount_id(const char *head, ssize_t len, unsigned long long *out)
{
    unsigned long long v = 0;
    ssize_t i = 0;
    for (; i < len && head[i] >= '0' && head[i] <= '9'; i++) {
        if (i >= 19)
            return 0;
        v = v * 10 + (unsigned long long)(head[i] - '0');
    }
    if (i == 0 || (i < len && head[i] != ' ') || (i == len && len >= HEAD))
        return 0;
    *out = v;
    return 1;
}

/* Whether the text of a uid_map (len bytes) is the identity map of all ids
 * (procscan.in_initial_user_namespace): one line of three numbers 0 0
 * 4294967295. */
static int
identity_map(const char *buf, ssize_t len)
{
    unsigned long long nums[3];
    int count = 0, lines = 0;
    ssize_t i = 0;
    while (i < len) {
        /* one line */
        int in_line = 0;
        while (i < len && buf[i] != '\n') {
            if (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\v' || buf[i] == '\f') {
                i++;
                continue;
            }
            if (buf[i] < '0' || buf[i] > '9')
                return 0;
            unsigned long long v = 0;
            int digits = 0;
            while (i < len && buf[i] >= '0' && buf[i] <= '9') {
                if (++digits > 19)
                    return 0;
                v = v * 10 + (unsigned long long)(buf[i] - '0');
                i++;
            }
            if (!in_line) {
                in_line = 1;
                if (++lines > 1)
                    return 0;
            }
            if (count == 3)
                return 0;
            nums[count++] = v;
        }
        i++;  /* the newline */
    }
    return lines == 1 && count == 3 && nums[0] == 0 && nums[1] == 0 && nums[2] == 4294967295ULL;
}

static int
in_initial_user_namespace(int procfd, const char *pid)
{
    char path[64];
    if (snprintf(path, sizeof path, "%s/uid_map", pid) >= (int)sizeof path)
        return 0;
    int fd = openat(procfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    char buf[UID_MAP_MAX];
    ssize_t len = read(fd, buf, sizeof buf);
    close(fd);
    return len > 0 && identity_map(buf, len);
}

/* One process: 0 looked at or passed over, -1 no memory. */
static int
one_process(Scan *s, int procfd, const char *name)
{
    char path[64];
    long pid = 0;
    for (const char *c = name; *c; c++) {
        if (*c < '0' || *c > '9' || pid > 100000000L)
            return 0;  /* not a pid (or one no kernel makes) */
        pid = pid * 10 + (*c - '0');
    }
    if (!*name || snprintf(path, sizeof path, "%s/mountinfo", name) >= (int)sizeof path)
        return 0;
    /* The owner of /proc/<pid> (its euid; root if not dumpable), first. */
    struct stat st;
    if (fstatat(procfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return 0;  /* gone meanwhile */
    if (skipped_owner(s, (unsigned int)st.st_uid)) {
        s->skipped++;
        return 0;
    }
    int fd = openat(procfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;  /* gone meanwhile, or hidden */
    char head[HEAD];
    ssize_t len = read(fd, head, sizeof head);
    close(fd);
    unsigned long long first;
    if (len <= 0 || !first_mount_id(head, len, &first))
        return 0;  /* exiting (no namespace any more), or not a mountinfo */
    s->processes++;
    long k = pair_index(s, first, (unsigned int)st.st_uid, pid);
    if (k < 0)
        return -1;
    Pair *p = &s->pairs[k];
    if (p->owner != 0 && !p->initial && in_initial_user_namespace(procfd, name))
        p->initial = 1;
    return 0;
}

/* The scan itself, without the GIL: 0, or an errno. */
static int
scan_proc(Scan *s, const char *proc)
{
    int procfd = open(proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (procfd < 0)
        return errno;
    char *buf = malloc(DENTS);
    if (!buf) {
        close(procfd);
        return ENOMEM;
    }
    int err = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, procfd, buf, DENTS);
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64_ *d = (struct dirent64_ *)(buf + off);
            off += d->d_reclen;
            if (d->d_name[0] >= '0' && d->d_name[0] <= '9' && one_process(s, procfd, d->d_name) < 0) {
                err = ENOMEM;
                goto out;
            }
        }
    }
out:
    free(buf);
    close(procfd);
    return err;
}

static PyObject *
cprocscan_scan(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *path, *skip;
    if (!PyArg_ParseTuple(args, "O&O!:scan", PyUnicode_FSConverter, &path, &PyTuple_Type, &skip))
        return NULL;
    Scan s = {0};
    int err;
    /* The owners to skip: a sorted tuple of uids (procscan.scan sorts it). */
    Py_ssize_t nskip = PyTuple_GET_SIZE(skip);
    unsigned int *owners = PyMem_Malloc((size_t)(nskip ? nskip : 1) * sizeof *owners);
    if (!owners) {
        Py_DECREF(path);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < nskip; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(skip, i));
        if ((v == (unsigned long)-1 && PyErr_Occurred()) || v > 0xFFFFFFFFUL || (i && v < owners[i - 1])) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "skip: a sorted tuple of uids");
            PyMem_Free(owners);
            Py_DECREF(path);
            return NULL;
        }
        owners[i] = (unsigned int)v;
    }
    s.skip = owners;
    s.nskip = (size_t)nskip;
    Py_BEGIN_ALLOW_THREADS
    err = scan_proc(&s, PyBytes_AS_STRING(path));
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    PyObject *out = NULL, *list = NULL;
    if (err == ENOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    /* Any other error (the proc directory could not be opened or read):
     * what was seen is the census, as for the reference. */
    if (!(list = PyList_New((Py_ssize_t)s.n)))
        goto done;
    for (size_t i = 0; i < s.n; i++) {
        Pair *p = &s.pairs[i];
        PyObject *t = Py_BuildValue("(KIlO)", p->first, p->owner, p->pid, p->initial ? Py_True : Py_False);
        if (!t)
            goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    out = Py_BuildValue("(LLO)", s.processes, s.skipped, list);
done:
    Py_XDECREF(list);
    free(s.pairs);
    free(s.slots);
    PyMem_Free(owners);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", cprocscan_scan, METH_VARARGS,
     "scan(proc_path, skip) -> (processes, skipped, [(first_id, owner, pid, initial), ...]): the\n"
     "per-process part of procscan.scan, grouped by (namespace, owner) in the order first seen."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cprocscan", "The in-use check's per-process scan of /proc (procscan.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cprocscan(void)
{
    return PyModule_Create(&module);
}
