/* The removal walk in C: locald_admin.fs._cwalk.
 *
 * The same walk as the Python one, traverse.Traversal with the
 * removal._Removal visitor (removal.py, the reference; read it first),
 * decision for decision, so that the differential tests
 * (tests/test_walk_differential.py) can ask both for the same result.  It is
 * called by compiled.compiled_remove_tree, which hands it the report, the
 * reason strings (report.py) and the limits.  What differs is only how: the
 * GIL is released for the walk itself and taken back only to report
 * (report.Findings), to ask the trust rule about a directory that is neither
 * the caller's nor root's alone, and to look at the cancel flag; directories
 * are read with getdents64 into one bounded buffer per held directory.
 *
 * The defences, each where the reference has it:
 *   - every directory is entered with openat2(RESOLVE_BENEATH |
 *     RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS) relative
 *     to the held fd of the directory that was listed: a symlink is never
 *     followed (ELOOP/ENOTDIR: the name is unlinked), a mount never entered
 *     (EXDEV: reported as a mount, left in place);
 *   - every unlinkat/rmdir is relative to a held fd, never a path;
 *   - an entry is a directory by its d_type; one of unknown type (DT_UNKNOWN)
 *     is opened O_PATH with the same openat2 flags and fstat'ed first,
 *     never fstatat'ed (unknown_is_dir);
 *   - at most max_held fds of ours are open; the oldest (never the current
 *     directory's) are closed, and a closed parent is reopened through ".."
 *     only if fstat shows the (st_dev, st_ino) recorded on the way down and a
 *     directory; otherwise the closed part of the branch is abandoned;
 *   - a directory whose fd was closed loses its listing and is listed again
 *     from the start, passing over the entries it left in place ("kept", at
 *     most max_kept; beyond that it is not listed again);
 *   - nothing deeper than max_depth levels is entered; rescans on ENOTEMPTY
 *     at most max_rescans; the target's rmdir only if its name still is the
 *     directory we hold;
 *   - no recursion; memory per level constant (a frame, the name; the
 *     listing buffer only while the directory's fd is held).
 *
 * The tests race it and make its calls fail from outside, at its system
 * calls (harness/syscalls.py, seccomp user notification): it has no seam.
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
#include <sys/types.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x030A0000  /* Python 3.9: what 3.10 added */
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static int
PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *o)
{
    Py_INCREF(o);
    if (PyModule_AddObject(m, name, o) < 0) {
        Py_DECREF(o);
        return -1;
    }
    return 0;
}
#endif

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define RESOLVE_NO_XDEV_ 0x01
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_NO_SYMLINKS_ 0x04
#define RESOLVE_BENEATH_ 0x08
#define BENEATH (RESOLVE_BENEATH_ | RESOLVE_NO_SYMLINKS_ | RESOLVE_NO_XDEV_ | RESOLVE_NO_MAGICLINKS_)
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define ENTRY_FLAGS (O_PATH | O_NOFOLLOW | O_CLOEXEC)

#define BUFSZ 16384         /* getdents64 buffer of one held directory */
#define CANCEL_EVERY 128    /* loop steps (entries, leaves) between looks at the cancel flag */
#define DT_UNKNOWN_ 0
#define DT_DIR_ 4

struct open_how_ {
    uint64_t flags, mode, resolve;
};

struct dirent64_ {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int
openat2_beneath(int dirfd, const char *name, uint64_t flags)
{
    struct open_how_ how = {flags | O_NOFOLLOW, 0, BENEATH};
    return (int)syscall(SYS_openat2, dirfd, name, &how, sizeof how);
}

/* -- the progress counter: read by another thread while the walk runs ------- */

typedef struct {
    PyObject_HEAD
    long long removed;
} Counter;

static PyObject *
Counter_get_removed(Counter *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(__atomic_load_n(&self->removed, __ATOMIC_RELAXED));
}

static PyGetSetDef Counter_getset[] = {
    {"removed", (getter)Counter_get_removed, NULL, "entries removed so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "locald_admin.fs._cwalk.Counter",
    .tp_basicsize = sizeof(Counter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Entries removed by a running C walk (atomic; one writer).",
    .tp_new = PyType_GenericNew,
    .tp_getset = Counter_getset,
};

/* -- the walk ---------------------------------------------------------------- */

enum { L_FRESH, L_OPEN, L_EOF, L_RESUME };

typedef struct {
    int fd;                 /* -1 while closed to bound the fd count */
    dev_t dev;
    ino_t ino;
    uint64_t dino;          /* its inode number as its parent's listing shows it */
    char *name;             /* malloc'd, namelen bytes (no NUL inside) + NUL */
    size_t namelen;
    int state;              /* of its listing: L_* */
    long pos;               /* entries read from the current listing */
    int rescans;
    int incomplete;         /* something below could not be removed */
    uint64_t *kept;         /* inode numbers of entries left in place */
    int nkept;              /* -1: more than max_kept (overflow) */
    char *buf;              /* getdents64 buffer while the listing is open */
    int bpos, blen;
} Frame;

typedef struct {
    Frame *fr;
    size_t n, cap;
    int held, first_open;
    /* settings */
    long max_depth;
    int max_held, max_rescans, max_kept;
    int keep_dir;
    int has_rule;
    uid_t owner_uid;
    /* Python objects (borrowed) */
    PyObject *result, *refuse, *cancel;
    PyObject *too_deep, *overflow, *moved, *replaced;
    Counter *counter;
    /* state */
    PyThreadState *ts;      /* non-NULL while the GIL is released */
    int pyerr;              /* a Python exception is set: unwind */
    int cancelled;
    int steps;
} Walk;

static void
py_enter(Walk *w)
{
    if (w->ts) {
        PyEval_RestoreThread(w->ts);
        w->ts = NULL;
    }
}

static void
py_leave(Walk *w)
{
    if (!w->ts)
        w->ts = PyEval_SaveThread();
}

static void
drop_listing(Frame *f)
{
    free(f->buf);
    f->buf = NULL;
    f->bpos = f->blen = 0;
}

static void
free_frame(Frame *f)
{
    drop_listing(f);
    free(f->name);
    f->name = NULL;
    free(f->kept);
    f->kept = NULL;
}

static int
push(Walk *w, int fd, const struct stat *st, const char *name, size_t namelen, uint64_t dino)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        Frame *fr = realloc(w->fr, cap * sizeof *fr);
        if (!fr)
            return -1;
        w->fr = fr;
        w->cap = cap;
    }
    Frame *f = &w->fr[w->n];
    memset(f, 0, sizeof *f);
    f->name = malloc(namelen + 1);
    if (!f->name)
        return -1;
    memcpy(f->name, name, namelen);
    f->name[namelen] = 0;
    f->namelen = namelen;
    f->fd = fd;
    f->dev = st->st_dev;
    f->ino = st->st_ino;
    f->dino = dino;
    f->state = L_FRESH;
    w->n++;
    return 0;
}

static void
keep(Walk *w, Frame *f, uint64_t ino)
{
    if (f->nkept < 0)
        return;
    if (f->nkept >= w->max_kept) {
        free(f->kept);
        f->kept = NULL;
        f->nkept = -1;
        return;
    }
    if (!f->kept) {
        f->kept = malloc(sizeof(uint64_t) * (w->max_kept > 0 ? w->max_kept : 1));
        if (!f->kept) {  /* cannot remember it: the safe side is to list it no more */
            f->nkept = -1;
            return;
        }
    }
    f->kept[f->nkept++] = ino;
}

static int
is_kept(const Frame *f, uint64_t ino)
{
    for (int i = 0; i < f->nkept; i++)
        if (f->kept[i] == ino)
            return 1;
    return 0;
}

/* The path (relative to the target) of frames 2..upto-1, and `child` when
 * non-NULL: what the reference's t.rel / _path builds.  GIL held. */
static PyObject *
rel_path(Walk *w, size_t upto, const char *child, size_t childlen)
{
    size_t len = 0, parts = 0;
    for (size_t i = 2; i < upto; i++, parts++)
        len += w->fr[i].namelen;
    if (child) {
        len += childlen;
        parts++;
    }
    if (parts > 1)
        len += parts - 1;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!b)
        return NULL;
    char *p = PyBytes_AS_STRING(b);
    int first = 1;
    for (size_t i = 2; i < upto; i++) {
        if (!first)
            *p++ = '/';
        memcpy(p, w->fr[i].name, w->fr[i].namelen);
        p += w->fr[i].namelen;
        first = 0;
    }
    if (child) {
        if (!first)
            *p++ = '/';
        memcpy(p, child, childlen);
        p += childlen;
    }
    return b;
}

static PyObject *
err_obj(int err)
{
    if (err)
        return PyLong_FromLong(err);
    Py_RETURN_NONE;
}

/* The path of a report, built only when Findings will keep it (a deep path
 * costs its depth to build): `keeps` is what result.keeps(...) or
 * result.keeps_mount() answered (a new reference, consumed here; NULL if
 * the call failed).  A new reference to the path (bytes) or to None; NULL
 * on a Python error. */
static PyObject *
rel_if_kept(Walk *w, PyObject *keeps, size_t upto, const char *child, size_t childlen)
{
    if (!keeps)
        return NULL;
    int k = PyObject_IsTrue(keeps);
    Py_DECREF(keeps);
    if (k < 0)
        return NULL;
    return k ? rel_path(w, upto, child, childlen) : Py_NewRef(Py_None);
}

/* result.fail(rel, err or None, reason or strerror(err)); the path is built
 * only if Findings keeps it.  Returns -1 on a Python error. */
static int
report_fail(Walk *w, size_t upto, const char *child, size_t childlen, int err, PyObject *reason)
{
    int rc = -1;
    PyObject *e = NULL, *rel = NULL, *why = NULL, *r = NULL;
    py_enter(w);
    if (!(e = err_obj(err)))
        goto out;
    if (!(rel = rel_if_kept(w, PyObject_CallMethod(w->result, "keeps", "O", e), upto, child, childlen)))
        goto out;
    if (reason)
        why = Py_NewRef(reason);
    else if (!(why = PyUnicode_DecodeLocale(strerror(err), "surrogateescape")))
        goto out;
    if (!(r = PyObject_CallMethod(w->result, "fail", "OOO", rel, e, why)))
        goto out;
    rc = 0;
out:
    Py_XDECREF(e);
    Py_XDECREF(rel);
    Py_XDECREF(why);
    Py_XDECREF(r);
    if (rc < 0)
        w->pyerr = 1;
    py_leave(w);
    return rc;
}

static int
report_mount(Walk *w, size_t upto, const char *child, size_t childlen)
{
    int rc = -1;
    PyObject *rel = NULL, *r = NULL;
    py_enter(w);
    if (!(rel = rel_if_kept(w, PyObject_CallMethod(w->result, "keeps_mount", NULL), upto, child, childlen)))
        goto out;
    if (!(r = PyObject_CallMethod(w->result, "mount", "O", rel)))
        goto out;
    rc = 0;
out:
    Py_XDECREF(rel);
    Py_XDECREF(r);
    if (rc < 0)
        w->pyerr = 1;
    py_leave(w);
    return rc;
}

/* The trust rule (owners.OwnerRule.refusal, kept in Python): NULL error,
 * Py_None (new ref) enter it, a str (new ref) the reason to leave it. */
static PyObject *
ask_rule(Walk *w, int parent_fd, int child_fd)
{
    py_enter(w);
    PyObject *r = PyObject_CallFunction(w->refuse, "ii", parent_fd, child_fd);
    if (!r)
        w->pyerr = 1;
    py_leave(w);
    return r;
}

/* Whether the trust rule refuses the directory child_fd (fstat st) of
 * parent_fd: 0 enter, 1 refused (reported at upto/child), -1 error.  The
 * rule is owners.OwnerRule.untrusted; its two plain cases are decided here
 * as there (a tree of root's and the caller's directories never takes the
 * GIL), every other is asked of it. */
static int
refused_by_rule(Walk *w, int parent_fd, int child_fd, const struct stat *st, size_t upto, const char *child,
                size_t childlen)
{
    if (!w->has_rule || st->st_uid == w->owner_uid)
        return 0;  /* the caller's own */
    if (st->st_uid == 0 && !(st->st_mode & (S_IWGRP | S_IWOTH)))
        return 0;  /* root's, writable by root alone: nobody else can have moved it here */
    PyObject *why = ask_rule(w, parent_fd, child_fd);
    if (!why)
        return -1;
    if (why == Py_None) {
        Py_DECREF(why);
        return 0;
    }
    int rc = report_fail(w, upto, child, childlen, 0, why);
    py_enter(w);
    Py_DECREF(why);
    py_leave(w);
    return rc < 0 ? -1 : 1;
}

/* Whether cancel is set (looked at every CANCEL_EVERY steps). -1: error. */
static int
cancel_set(Walk *w, int now)
{
    if (!w->cancel)
        return 0;
    if (!now && ++w->steps < CANCEL_EVERY)
        return 0;
    w->steps = 0;
    py_enter(w);
    int rc;
    PyObject *r = PyObject_CallMethod(w->cancel, "is_set", NULL);
    if (!r) {
        rc = -1;
        w->pyerr = 1;
    } else {
        rc = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (rc < 0)
            w->pyerr = 1;
    }
    py_leave(w);
    return rc;
}

static void
count_removed(Walk *w)
{
    __atomic_fetch_add(&w->counter->removed, 1, __ATOMIC_RELAXED);
}

/* The listing failed with err: reported (what was not read is absent). */
static int
list_failed(Walk *w, Frame **fp, int err)
{
    Frame *f = *fp;
    f->state = L_EOF;
    f->incomplete = 1;
    drop_listing(f);
    return report_fail(w, w->n, NULL, 0, err, NULL);
}

typedef struct {
    const char *name;
    size_t namelen;
    uint64_t ino;
    unsigned char d_type;   /* as listed: DT_DIR_ entered, DT_UNKNOWN_ looked at first, any other unlinked */
} Entry;

/* The next entry of the current directory: 1 one, 0 the end, -1 error.
 * The entry's name stays valid until the next call for this frame. */
static int
next_entry_getdents(Walk *w, Entry *e)
{
    Frame *f = &w->fr[w->n - 1];
    if (f->state == L_FRESH) {
        f->pos = 0;
        f->state = L_OPEN;
        if (!f->buf && !(f->buf = malloc(BUFSZ))) {
            py_enter(w);
            PyErr_NoMemory();
            w->pyerr = 1;
            return -1;
        }
        f->bpos = f->blen = 0;
        if (lseek(f->fd, 0, SEEK_SET) < 0)
            return list_failed(w, &f, errno) < 0 ? -1 : 0;
    }
    for (;;) {
        if (f->bpos >= f->blen) {
            if (f->state == L_EOF) {
                drop_listing(f);
                return 0;
            }
            long got = syscall(SYS_getdents64, f->fd, f->buf, BUFSZ);
            if (got < 0)
                return list_failed(w, &f, errno) < 0 ? -1 : 0;
            if (got == 0) {
                f->state = L_EOF;
                drop_listing(f);
                return 0;
            }
            f->bpos = 0;
            f->blen = (int)got;
        }
        struct dirent64_ *d = (struct dirent64_ *)(f->buf + f->bpos);
        f->bpos += d->d_reclen;
        const char *nm = d->d_name;
        if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
            continue;
        f->pos++;
        e->name = nm;
        e->namelen = strlen(nm);
        e->ino = d->d_ino;
        e->d_type = d->d_type;
        return 1;
    }
}

/* Close the oldest fds of ours (never the current directory's) until at
 * most a little below max_held are open (traverse._bound). */
static void
bound(Walk *w)
{
    int goal = w->max_held - w->max_held / 8;
    size_t last = w->n - 1;
    while (w->held > goal && (size_t)w->first_open < last) {
        Frame *f = &w->fr[w->first_open];
        int consumed = f->state == L_EOF && f->bpos >= f->blen;
        if (!consumed && f->state == L_OPEN && f->bpos >= f->blen) {
            /* Every entry read so far was visited: whether there are more
             * decides if it is listed again (the reference knows, having
             * read fewer than it asked for). */
            long got = syscall(SYS_getdents64, f->fd, f->buf, BUFSZ);
            if (got == 0) {
                consumed = 1;
                f->state = L_EOF;
            }
        }
        if (!consumed)
            f->state = L_RESUME;  /* listed again from the start when we come back */
        drop_listing(f);
        close(f->fd);
        f->fd = -1;
        w->held--;
        w->first_open++;
    }
}

/* Reopen parent through ".." of f; 1 if it is the directory recorded on the
 * way down (traverse._climb). */
static int
climb(Frame *f, Frame *parent)
{
    int pfd = openat(f->fd, "..", DIR_FLAGS);
    if (pfd < 0)
        return 0;
    struct stat st;
    if (fstat(pfd, &st) == 0 && st.st_dev == parent->dev && st.st_ino == parent->ino && S_ISDIR(st.st_mode)) {
        parent->fd = pfd;
        return 1;
    }
    close(pfd);
    return 0;
}

/* Whether f's name in dirfd is still the directory we hold (removal._same_entry). */
static int
same_entry(int dirfd, const Frame *f)
{
    int fd = openat2_beneath(dirfd, f->name, ENTRY_FLAGS);
    if (fd < 0)
        return errno == ENOENT;
    struct stat st;
    int same = fstat(fd, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino;
    close(fd);
    return same;
}

static void
restart_listing(Walk *w, Frame *f)
{
    (void)w;
    f->pos = 0;
    f->state = L_FRESH;
    free(f->kept);
    f->kept = NULL;
    f->nkept = 0;
}

/* Whether the entry e of the current directory, whose type its file system
 * does not record (DT_UNKNOWN_: ext2 -O ^filetype), is a directory: looked
 * at before any unlink (whose EPERM, immutable or append-only, comes before
 * EISDIR and would hide a directory) through an O_PATH fd of the entry
 * itself (a symlink's own), opened without crossing a mount, and fstat;
 * never a plain fstatat, which would follow a mount point into its file
 * system (a hung FUSE daemon).  As removal._Removal.on_entry does with
 * Fs.lstat_beneath.  1 a directory, 0 not, 2 nothing more to do (gone; or
 * reported and kept: EXDEV a mount point, any other error), -1 error. */
static int
unknown_is_dir(Walk *w, const Entry *e)
{
    Frame *f = &w->fr[w->n - 1];
    struct stat st;
    int err = 0;
    int fd = openat2_beneath(f->fd, e->name, ENTRY_FLAGS);
    if (fd < 0) {
        err = errno;
    } else {
        if (fstat(fd, &st) < 0)
            err = errno;
        close(fd);
        if (!err)
            return S_ISDIR(st.st_mode) ? 1 : 0;
    }
    if (err == ENOENT)
        return 2;
    int rc;
    if (err == EXDEV)  /* a mount point (M3), of any type: left in place */
        rc = report_mount(w, w->n, e->name, e->namelen);
    else
        rc = report_fail(w, w->n, e->name, e->namelen, err, NULL);
    f = &w->fr[w->n - 1];
    f->incomplete = 1;
    keep(w, f, e->ino);
    return rc < 0 ? -1 : 2;
}

/* A directory entry e of the current directory f: act on it.  Returns 0 or
 * -1 (Python error); may push a frame. */
static int
on_entry(Walk *w, const Entry *e)
{
    Frame *f = &w->fr[w->n - 1];
    int err;
    int is_dir = e->d_type == DT_DIR_;
    if (e->d_type == DT_UNKNOWN_) {
        is_dir = unknown_is_dir(w, e);
        if (is_dir != 0 && is_dir != 1)
            return is_dir < 0 ? -1 : 0;
    }
    if (!is_dir) {
        /* unlinkat relative to the held fd: a symlink goes as a name, its
         * target is never touched (S11).  EISDIR: it became a directory. */
        if (unlinkat(f->fd, e->name, 0) == 0) {
            count_removed(w);
            return 0;
        }
        err = errno;
        if (err == ENOENT)
            return 0;
        if (err != EISDIR) {
            int rc = report_fail(w, w->n, e->name, e->namelen, err, NULL);
            f = &w->fr[w->n - 1];
            f->incomplete = 1;
            keep(w, f, e->ino);
            return rc;
        }
    }
    /* A directory. */
    if ((long)w->n > w->max_depth + 1) {  /* the child would be deeper than max_depth (V1) */
        int rc = report_fail(w, w->n, e->name, e->namelen, 0, w->too_deep);
        f->incomplete = 1;
        keep(w, f, e->ino);
        return rc;
    }
    int cfd = openat2_beneath(f->fd, e->name, DIR_FLAGS);
    if (cfd < 0) {
        err = errno;
        if (err == ENOENT)
            return 0;
        if (err == ELOOP || err == ENOTDIR) {
            /* Not a directory any more: a symlink or a file swapped in (R1).
             * The name itself goes; it is never followed. */
            if (unlinkat(f->fd, e->name, 0) == 0) {
                count_removed(w);
                return 0;
            }
            if (errno == ENOENT)
                return 0;
            err = errno;
        }
        int rc;
        if (err == EXDEV)  /* a mount on it (M3): left in place */
            rc = report_mount(w, w->n, e->name, e->namelen);
        else
            rc = report_fail(w, w->n, e->name, e->namelen, err, NULL);
        f->incomplete = 1;
        keep(w, f, e->ino);
        return rc;
    }
    struct stat st;
    if (fstat(cfd, &st) < 0) {
        err = errno;
        close(cfd);
        int rc = report_fail(w, w->n, e->name, e->namelen, err, NULL);
        f->incomplete = 1;
        keep(w, f, e->ino);
        return rc;
    }
    /* Another user's directory where the caller could have had it put (S13). */
    int r = refused_by_rule(w, f->fd, cfd, &st, w->n, e->name, e->namelen);
    if (r != 0) {
        close(cfd);
        if (r < 0)
            return -1;
        f->incomplete = 1;
        keep(w, f, e->ino);
        return 0;
    }
    if (push(w, cfd, &st, e->name, e->namelen, e->ino) < 0) {
        close(cfd);
        py_enter(w);
        PyErr_NoMemory();
        w->pyerr = 1;
        return -1;
    }
    w->held++;
    if (w->held > w->max_held)
        bound(w);
    return 0;
}

/* Every entry of the current directory f was visited: climb to its parent
 * if closed, then rmdir it (or rescan it).  Returns 0 or -1. */
static int
on_leave(Walk *w)
{
    Frame *f = &w->fr[w->n - 1];
    Frame *parent = &w->fr[w->n - 2];
    int rc = 0;
    if (parent->fd < 0) {
        if (!climb(f, parent)) {
            /* Moved elsewhere while the parent's fd was closed (R2): abandon
             * the branch, every closed ancestor with it. */
            size_t upto = w->n - 1;
            close(f->fd);
            free_frame(f);
            w->n--;
            w->held--;
            PyObject *rel = NULL;
            /* the path of the closed parent, built before its frames go */
            py_enter(w);
            PyObject *keeps = PyObject_CallMethod(w->result, "keeps", "O", Py_None);
            int k = keeps ? PyObject_IsTrue(keeps) : -1;
            Py_XDECREF(keeps);
            if (k > 0)
                rel = rel_path(w, upto, NULL, 0);
            else if (k == 0)
                rel = Py_NewRef(Py_None);
            while (w->fr[w->n - 1].fd < 0) {
                free_frame(&w->fr[w->n - 1]);
                w->n--;
            }
            w->first_open = (int)w->n;
            Frame *survivor = &w->fr[w->n - 1];
            survivor->incomplete = 1;
            if (!rel) {
                w->pyerr = 1;
                py_leave(w);
                return -1;
            }
            PyObject *r = PyObject_CallMethod(w->result, "fail", "OOO", rel, Py_None, w->moved);
            Py_DECREF(rel);
            if (!r) {
                w->pyerr = 1;
                rc = -1;
            }
            Py_XDECREF(r);
            py_leave(w);
            return rc;
        }
        w->held++;
        w->first_open = (int)w->n - 2;
    }
    int is_target = w->n == 2;
    if (f->incomplete) {
        parent->incomplete = 1;
        keep(w, parent, f->dino);
        goto pop;
    }
    if (is_target) {
        if (w->keep_dir) {
            /* Kept, emptied: a listing that found nothing says it is empty;
             * one that found entries is looked at again (R5). */
            if (f->pos) {
                if (f->rescans < w->max_rescans) {
                    f->rescans++;
                    restart_listing(w, f);
                    return 0;
                }
                rc = report_fail(w, 2, "", 0, ENOTEMPTY, NULL);
            }
            goto pop;
        }
        if (!same_entry(parent->fd, f)) {
            /* The target's name now names another directory (R4). */
            rc = report_fail(w, 2, "", 0, 0, w->replaced);
            goto pop;
        }
    }
    if (unlinkat(parent->fd, f->name, AT_REMOVEDIR) == 0) {
        count_removed(w);
    } else if (errno != ENOENT) {
        int err = errno;
        if (err == ENOTEMPTY && f->rescans < w->max_rescans) {
            f->rescans++;  /* refilled while we walked: look again (R5) */
            restart_listing(w, f);
            return 0;
        }
        if (err == EBUSY)  /* a mount on it (M3): left in place */
            rc = report_mount(w, w->n, NULL, 0);
        else
            rc = report_fail(w, w->n, NULL, 0, err, NULL);
        f = &w->fr[w->n - 1];
        parent = &w->fr[w->n - 2];
        parent->incomplete = 1;
        keep(w, parent, f->dino);
    }
pop:
    f = &w->fr[w->n - 1];
    if (w->n > 2) {
        close(f->fd);
        w->held--;
    }
    free_frame(f);
    w->n--;
    return rc;
}

static int
run(Walk *w, int parent_fd, const char *name, size_t namelen, int dir_fd)
{
    struct stat pst, st;
    if (fstat(parent_fd, &pst) < 0 || fstat(dir_fd, &st) < 0) {
        py_enter(w);
        PyErr_SetFromErrno(PyExc_OSError);
        w->pyerr = 1;
        return -1;
    }
    if (push(w, parent_fd, &pst, "", 0, pst.st_ino) < 0 || push(w, dir_fd, &st, name, namelen, st.st_ino) < 0) {
        py_enter(w);
        PyErr_NoMemory();
        w->pyerr = 1;
        return -1;
    }
    w->first_open = 2;
    int r = refused_by_rule(w, parent_fd, dir_fd, &st, 2, NULL, 0);
    if (r != 0)
        return r < 0 ? -1 : 0;
    if (cancel_set(w, 1)) {
        if (!w->pyerr)
            w->cancelled = 1;
        return w->pyerr ? -1 : 0;
    }
    for (;;) {
        if (w->n < 2)
            return 0;
        int c = cancel_set(w, 0);
        if (c) {
            if (c < 0)
                return -1;
            w->cancelled = 1;
            return 0;
        }
        Frame *f = &w->fr[w->n - 1];
        if (f->state == L_RESUME) {
            /* Its listing was dropped when its fd was closed: list it again,
             * passing over what was left in place; one that left too many
             * in place to remember is not listed again (traverse, on_resume). */
            if (f->nkept < 0) {
                f->state = L_EOF;
                f->incomplete = 1;
                if (report_fail(w, w->n, NULL, 0, 0, w->overflow) < 0)
                    return -1;
                continue;
            }
            f->state = L_FRESH;
        }
        Entry e;
        int got = next_entry_getdents(w, &e);
        if (got < 0 || w->pyerr)
            return -1;
        if (got) {
            f = &w->fr[w->n - 1];
            if (f->nkept > 0 && is_kept(f, e.ino))
                continue;  /* left in place before this listing was resumed */
            if (on_entry(w, &e) < 0)
                return -1;
            continue;
        }
        if (on_leave(w) < 0)
            return -1;
    }
}

static void
cleanup(Walk *w)
{
    for (size_t i = 0; i < w->n; i++) {
        if (i >= 2 && w->fr[i].fd >= 0)
            close(w->fr[i].fd);
        free_frame(&w->fr[i]);
    }
    free(w->fr);
    w->fr = NULL;
    w->n = w->cap = 0;
}

PyDoc_STRVAR(remove_tree_doc,
"remove_tree(parent_fd, name, dir_fd, result, counter, owner_uid, refuse, cancel, keep_dir,\n"
"            max_depth, max_held, max_rescans, max_kept, reasons) -> cancelled\n\n"
"Remove the directory `name` (bytes) of `parent_fd`, open as `dir_fd`, and\n"
"everything below it; see walk.remove_tree, whose semantics these are\n"
"(called by compiled.compiled_remove_tree).\n"
"`result`: a report.Findings (keeps, keeps_mount, fail, mount are called);\n"
"`counter`: a Counter counting removals; `owner_uid`: -1 for no owner rule,\n"
"else the caller's uid, whose directories and root's are entered without\n"
"asking `refuse(parent_fd, child_fd)` (None: enter; str: why not);\n"
"`cancel`: None or an object with is_set(); `reasons`: (too deep, kept\n"
"overflow, moved, replaced) strings, report.py's.  Returns True if cancelled.");

static PyObject *
cw_remove_tree(PyObject *self, PyObject *args)
{
    (void)self;
    int parent_fd, dir_fd, keep_dir, max_held, max_rescans, max_kept;
    long owner_uid, max_depth;
    const char *name;
    Py_ssize_t namelen;
    PyObject *result, *counter, *refuse, *cancel, *reasons;
    if (!PyArg_ParseTuple(args, "iy#iOO!lOOpliiiO!", &parent_fd, &name, &namelen, &dir_fd, &result, &CounterType,
                          &counter, &owner_uid, &refuse, &cancel, &keep_dir, &max_depth, &max_held, &max_rescans,
                          &max_kept, &PyTuple_Type, &reasons))
        return NULL;
    if (PyTuple_GET_SIZE(reasons) != 4) {
        PyErr_SetString(PyExc_ValueError, "reasons: 4 strings");
        return NULL;
    }
    if (max_held < 1 || max_kept < 0 || max_depth < 0) {
        PyErr_SetString(PyExc_ValueError, "max_held >= 1, max_kept >= 0, max_depth >= 0");
        return NULL;
    }
    if ((size_t)namelen != strlen(name)) {
        PyErr_SetString(PyExc_ValueError, "name contains NUL");
        return NULL;
    }
    Walk w;
    memset(&w, 0, sizeof w);
    w.max_depth = max_depth;
    w.max_held = max_held;
    w.max_rescans = max_rescans;
    w.max_kept = max_kept;
    w.keep_dir = keep_dir;
    w.has_rule = owner_uid >= 0 && refuse != Py_None;
    w.owner_uid = (uid_t)owner_uid;
    w.result = result;
    w.refuse = refuse;
    w.cancel = cancel == Py_None ? NULL : cancel;
    w.too_deep = PyTuple_GET_ITEM(reasons, 0);
    w.overflow = PyTuple_GET_ITEM(reasons, 1);
    w.moved = PyTuple_GET_ITEM(reasons, 2);
    w.replaced = PyTuple_GET_ITEM(reasons, 3);
    w.counter = (Counter *)counter;
    Py_INCREF(result);
    Py_XINCREF(w.cancel);
    Py_INCREF(reasons);
    Py_INCREF(refuse);
    Py_INCREF(counter);
    py_leave(&w);
    int rc = run(&w, parent_fd, name, (size_t)namelen, dir_fd);
    py_enter(&w);
    cleanup(&w);
    Py_DECREF(result);
    Py_XDECREF(w.cancel);
    Py_DECREF(reasons);
    Py_DECREF(refuse);
    Py_DECREF(counter);
    if (rc < 0 || w.pyerr) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "C walk failed without an exception");
        return NULL;
    }
    return PyBool_FromLong(w.cancelled);
}

static PyMethodDef methods[] = {
    {"remove_tree", cw_remove_tree, METH_VARARGS, remove_tree_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cwalk", "The removal walk in C (see walk.remove_tree).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cwalk(void)
{
    if (PyType_Ready(&CounterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Counter", (PyObject *)&CounterType) < 0
        || PyModule_AddIntConstant(m, "BUFSZ", BUFSZ) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
