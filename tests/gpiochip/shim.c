/*
 * gpioshim: a test-only emulation of the Linux GPIO character device (the gpiochip uAPI, v1 and v2), loaded
 * with LD_PRELOAD so that unmodified programs -- the real lgpio C library under rpi-lgpio, libgpiod-style C
 * callers, Python's os.open + fcntl.ioctl -- run on a machine that has no gpiochip.
 *
 * Why an LD_PRELOAD shim and not a kernel module or CUSE: this machine cannot load modules, and CUSE devices
 * cannot hand out the per-request file descriptors the uAPI returns. Intercepting the libc symbols is enough,
 * because every caller above reaches the kernel through open/ioctl/close in libc.
 *
 * Model. The state of every chip and line lives in one text file ($GPIOSHIM_STATE), shared by all processes and
 * changed only under an exclusive flock of "$GPIOSHIM_STATE.lock", so concurrent processes see one kernel. Each
 * line has a direction, a physical level, a holder (pid and start time, 0 = free), the holder's request flags
 * and its consumer label. Every real change is appended to $GPIOSHIM_HISTORY with a sequence number.
 *
 * Kernel behaviour modelled (drivers/gpio/gpiolib-cdev.c): requests are validated as the kernel does (EINVAL),
 * a line held by anyone (this process included) gives EBUSY, lines of a request are requested one by one and
 * the earlier ones are released again if a later one fails, an output request sets the level and then the
 * direction, an input request makes the line an input, a request with neither keeps the line as it is. A
 * released line keeps its direction and level when the pinctrl driver keeps released outputs (the Raspberry Pi
 * kernels' persist_gpio_outputs), otherwise an output becomes an input. A process that dies without closing its
 * request fds (SIGKILL, or any exit: the kernel closes fds without calling close()) has its lines released
 * lazily: every operation first releases lines whose holder no longer exists. Holders are pids of the PID
 * namespace every process of one fake Pi shares; a chip is recognised by the inode of its /dev placeholder.
 *
 * Not modelled: edge events and line watches (ENOTTY, or EINVAL for a request with edge flags), debounce,
 * lines held by kernel drivers, the level an input really reads (it reads the last level the line had).
 *
 * Under the harness, /proc/device-tree (a symlink to /sys/firmware/devicetree/base on every device-tree system,
 * absent on this x86 machine, and /proc cannot get new entries) is emulated here by rewriting the path.
 *
 * With GPIOSHIM_STATE unset every call passes straight through.
 */
#define _GNU_SOURCE
#ifdef _FORTIFY_SOURCE
#undef _FORTIFY_SOURCE
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/gpio.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_CHIPS 16
#define MAX_LINES 64
#define NAME_LEN GPIO_MAX_NAME_SIZE
#define STATE_MAX (256 * 1024)

#define V2_DIRECTION (GPIO_V2_LINE_FLAG_INPUT | GPIO_V2_LINE_FLAG_OUTPUT)
#define V2_EDGE (GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING)
#define V2_DRIVE (GPIO_V2_LINE_FLAG_OPEN_DRAIN | GPIO_V2_LINE_FLAG_OPEN_SOURCE)
#define V2_BIAS (GPIO_V2_LINE_FLAG_BIAS_PULL_UP | GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN | GPIO_V2_LINE_FLAG_BIAS_DISABLED)
#define V2_VALID ((GPIO_V2_LINE_FLAG_EVENT_CLOCK_HTE << 1) - 1)
/* What a held line keeps of its request's flags, and reports in line info. */
#define V2_KEPT (GPIO_V2_LINE_FLAG_ACTIVE_LOW | V2_DRIVE | V2_BIAS)
#define V1_VALID ((GPIOHANDLE_REQUEST_BIAS_DISABLE << 1) - 1)

/* ---- the shared state ---------------------------------------------------------------------------------- */

struct line_state {
    int output;                /* direction: 1 = output, 0 = input */
    int level;                 /* physical level */
    long pid;                  /* holder, 0 = free */
    unsigned long long start;  /* holder's start time (/proc/PID/stat field 22): a reused pid is not the holder */
    unsigned long long flags;  /* the holder's v2 request flags that stay with the line (V2_KEPT) */
    char name[NAME_LEN];
    char consumer[NAME_LEN];
};

struct chip_state {
    int number;
    int nlines;
    char label[NAME_LEN];
    struct line_state lines[MAX_LINES];
};

struct state {
    int keep_outputs;
    long seq;
    int nchips;
    struct chip_state chips[MAX_CHIPS];
};

struct paths {
    char state[PATH_MAX];
    char lock[PATH_MAX + 8];
    char tmp[PATH_MAX + 8];
    char history[PATH_MAX];
};

/* One locked read-modify-write of the state: begin() locks and loads, end() saves (if changed) and unlocks. */
struct session {
    const struct paths *paths;
    struct state *state;
    int lock_fd;
    int dirty;
};

/* ---- the real libc functions ---------------------------------------------------------------------------- */

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_open_2)(const char *, int);
static int (*real_open64_2)(const char *, int);
static int (*real_openat_2)(int, const char *, int);
static int (*real_openat64_2)(int, const char *, int);
static FILE *(*real_fopen)(const char *, const char *);
static FILE *(*real_fopen64)(const char *, const char *);
static int (*real_close)(int);
static int (*real_close_range)(unsigned int, unsigned int, int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_stat)(const char *, struct stat *);
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static DIR *(*real_opendir)(const char *);
static ssize_t (*real_readlink)(const char *, char *, size_t);

static void *next_symbol(const char *name)
{
    /* RTLD_NEXT finds libc's definition when preloaded; RTLD_DEFAULT when the harness loads us with ctypes. */
    void *symbol = dlsym(RTLD_NEXT, name);
    return symbol ? symbol : dlsym(RTLD_DEFAULT, name);
}

static void bind_real(void)
{
    real_open = next_symbol("open");
    real_open64 = next_symbol("open64");
    real_openat = next_symbol("openat");
    real_openat64 = next_symbol("openat64");
    real_open_2 = next_symbol("__open_2");
    real_open64_2 = next_symbol("__open64_2");
    real_openat_2 = next_symbol("__openat_2");
    real_openat64_2 = next_symbol("__openat64_2");
    real_fopen = next_symbol("fopen");
    real_fopen64 = next_symbol("fopen64");
    real_close = next_symbol("close");
    real_close_range = next_symbol("close_range");
    real_dup2 = next_symbol("dup2");
    real_dup3 = next_symbol("dup3");
    real_ioctl = next_symbol("ioctl");
    real_stat = next_symbol("stat");
    real_stat64 = next_symbol("stat64");
    real_lstat = next_symbol("lstat");
    real_lstat64 = next_symbol("lstat64");
    real_fstatat = next_symbol("fstatat");
    real_fstatat64 = next_symbol("fstatat64");
    real_statx = next_symbol("statx");
    real_access = next_symbol("access");
    real_faccessat = next_symbol("faccessat");
    real_opendir = next_symbol("opendir");
    real_readlink = next_symbol("readlink");
}

static pthread_once_t bound = PTHREAD_ONCE_INIT;

static void need_real(void)
{
    pthread_once(&bound, bind_real);
}

/* ---- configuration ---------------------------------------------------------------------------------------- */

static struct paths env_paths_storage;
static const struct paths *env_paths_value;
static int trace_enabled;
static pthread_once_t configured = PTHREAD_ONCE_INIT;

static void set_paths(struct paths *paths, const char *state, const char *history)
{
    snprintf(paths->state, sizeof(paths->state), "%s", state);
    snprintf(paths->lock, sizeof(paths->lock), "%s.lock", state);
    snprintf(paths->tmp, sizeof(paths->tmp), "%s.tmp", state);
    snprintf(paths->history, sizeof(paths->history), "%s", history ? history : "");
}

static void configure(void)
{
    const char *state = getenv("GPIOSHIM_STATE");
    trace_enabled = getenv("GPIOSHIM_TRACE") != NULL;
    if (state && *state) {
        set_paths(&env_paths_storage, state, getenv("GPIOSHIM_HISTORY"));
        env_paths_value = &env_paths_storage;
    }
}

/* The paths of the emulated kernel, or NULL: then nothing is emulated and every call passes through. */
static const struct paths *active(void)
{
    need_real();
    pthread_once(&configured, configure);
    return env_paths_value;
}

static void trace(const char *format, ...)
{
    va_list args;
    if (!trace_enabled) return;
    va_start(args, format);
    fprintf(stderr, "gpioshim[%d]: ", (int)getpid());
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

/* ---- small file helpers (on the real functions, never through the interposers) ---------------------------- */

static ssize_t read_all(const char *path, char *buffer, size_t size)
{
    int fd = real_open(path, O_RDONLY | O_CLOEXEC);
    size_t used = 0;
    if (fd < 0) return -1;
    while (used + 1 < size) {
        ssize_t got = read(fd, buffer + used, size - 1 - used);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        used += (size_t)got;
    }
    buffer[used] = '\0';
    real_close(fd);
    return (ssize_t)used;
}

static int write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t done = write(fd, data, size);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return -1;
        data += done;
        size -= (size_t)done;
    }
    return 0;
}

/* ---- processes: who holds a line ------------------------------------------------------------------------ */

/*
 * Liveness is decided by kill(pid, 0) in the caller's PID namespace, which every process using one fake Pi
 * shares, and refined from /proc/PID/stat when this process's /proc shows it: a zombie is dead, and a holder
 * whose start time differs is a reused pid. A /proc mounted for another PID namespace (a chroot into a
 * simulated Pi entered with nsenter --mount) shows none of our pids; then kill() alone decides.
 */
enum visibility { GONE, SHOWN, NOT_SHOWN };

/* What /proc says of pid: GONE (no such process, or a zombie), SHOWN (*start set), or NOT_SHOWN. */
static enum visibility proc_stat(long pid, unsigned long long *start)
{
    char path[64], text[1024], state;
    const char *fields;
    int field;
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    if (read_all(path, text, sizeof(text)) <= 0) return NOT_SHOWN;
    fields = strrchr(text, ')');  /* the command name may contain spaces and parentheses */
    if (!fields || sscanf(fields + 1, " %c", &state) != 1 || state == 'Z' || state == 'X') return GONE;
    /* the k-th space after ')' starts field 2 + k: the start time is field 22 */
    for (field = 0; field < 20 && fields; field++) fields = strchr(fields + 1, ' ');
    if (!fields || sscanf(fields, " %llu", start) != 1) return NOT_SHOWN;
    return SHOWN;
}

/* This process's start time, or 0 where its /proc does not show it (then pid reuse goes undetected). */
static unsigned long long start_time(long pid)
{
    unsigned long long start = 0;
    return proc_stat(pid, &start) == SHOWN ? start : 0;
}

static int holder_alive(const struct line_state *line)
{
    unsigned long long start = 0;
    enum visibility seen;
    if (kill((pid_t)line->pid, 0) != 0 && errno != EPERM) return 0;
    seen = proc_stat(line->pid, &start);
    if (seen == NOT_SHOWN) return 1;
    return seen == SHOWN && (line->start == 0 || start == line->start);
}

/* ---- state file: load and save -------------------------------------------------------------------------- */

static void parse_line_record(struct state *state, const char *text)
{
    int chip_no, offset, level, used = 0, i;
    long pid;
    unsigned long long start, flags;
    char direction[4], name[NAME_LEN];
    struct line_state *line;
    if (sscanf(text, "line %d %d %3s %d %ld %llu %llx %31s%n", &chip_no, &offset, direction, &level, &pid, &start,
               &flags, name, &used) != 8)
        return;
    for (i = 0; i < state->nchips; i++) {
        if (state->chips[i].number != chip_no || offset < 0 || offset >= state->chips[i].nlines) continue;
        line = &state->chips[i].lines[offset];
        line->output = strcmp(direction, "out") == 0;
        line->level = level != 0;
        line->pid = pid;
        line->start = start;
        line->flags = flags;
        snprintf(line->name, sizeof(line->name), "%s", strcmp(name, "-") == 0 ? "" : name);
        snprintf(line->consumer, sizeof(line->consumer), "%s", text[used] == ' ' ? text + used + 1 : "");
    }
}

static void parse_state(struct state *state, char *text)
{
    char *record, *save = NULL;
    struct chip_state *chip;
    for (record = strtok_r(text, "\n", &save); record; record = strtok_r(NULL, "\n", &save)) {
        if (sscanf(record, "keep_outputs %d", &state->keep_outputs) == 1) continue;
        if (sscanf(record, "seq %ld", &state->seq) == 1) continue;
        if (strncmp(record, "chip ", 5) == 0 && state->nchips < MAX_CHIPS) {
            chip = &state->chips[state->nchips];
            if (sscanf(record, "chip %d %d %31s", &chip->number, &chip->nlines, chip->label) == 3 &&
                chip->nlines > 0 && chip->nlines <= MAX_LINES)
                state->nchips++;
            continue;
        }
        if (strncmp(record, "line ", 5) == 0) parse_line_record(state, record);
    }
}

static int load_state(const struct paths *paths, struct state *state)
{
    char *text = malloc(STATE_MAX);
    int ok;
    if (!text) return -ENOMEM;
    memset(state, 0, sizeof(*state));
    state->keep_outputs = 1;
    ok = read_all(paths->state, text, STATE_MAX) >= 0;
    if (ok) parse_state(state, text);
    free(text);
    return ok ? 0 : -ENOENT;
}

static size_t format_state(const struct state *state, char *text, size_t size)
{
    size_t used = 0;
    int c, o;
    used += snprintf(text + used, size - used, "gpioshim 1\nkeep_outputs %d\nseq %ld\n", state->keep_outputs,
                     state->seq);
    for (c = 0; c < state->nchips && used < size; c++) {
        const struct chip_state *chip = &state->chips[c];
        used += snprintf(text + used, size - used, "chip %d %d %s\n", chip->number, chip->nlines, chip->label);
        for (o = 0; o < chip->nlines && used < size; o++) {
            const struct line_state *line = &chip->lines[o];
            used += snprintf(text + used, size - used, "line %d %d %s %d %ld %llu %llx %s %s\n", chip->number, o,
                             line->output ? "out" : "in", line->level, line->pid, line->start, line->flags,
                             line->name[0] ? line->name : "-", line->consumer);
        }
    }
    return used < size ? used : size;
}

/* Written aside and renamed, so that a process killed mid-write never leaves a torn state. */
static int save_state(const struct paths *paths, const struct state *state)
{
    char *text = malloc(STATE_MAX);
    size_t size;
    int fd, failed;
    if (!text) return -ENOMEM;
    size = format_state(state, text, STATE_MAX);
    fd = real_open(paths->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    failed = fd < 0 || write_all(fd, text, size) != 0;
    if (fd >= 0) real_close(fd);
    free(text);
    if (failed || rename(paths->tmp, paths->state) != 0) return -EIO;
    return 0;
}

/* ---- history --------------------------------------------------------------------------------------------- */

static void note(struct session *session, long pid, int chip, int offset, const char *format, ...)
{
    char event[160], record[256];
    va_list args;
    int fd, size;
    va_start(args, format);
    vsnprintf(event, sizeof(event), format, args);
    va_end(args);
    session->state->seq++;
    session->dirty = 1;
    if (chip < 0)
        size = snprintf(record, sizeof(record), "%ld %ld - - %s\n", session->state->seq, pid, event);
    else
        size = snprintf(record, sizeof(record), "%ld %ld %d %d %s\n", session->state->seq, pid, chip, offset,
                        event);
    trace("history: %.*s", size - 1, record);
    if (!session->paths->history[0]) return;
    fd = real_open(session->paths->history, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write_all(fd, record, (size_t)size) != 0) trace("cannot append to %s", session->paths->history);
    real_close(fd);
}

/* ---- line semantics ---------------------------------------------------------------------------------------- */

static void set_level(struct session *session, int chip, int offset, long pid, int level)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    if (line->level == level) return;
    note(session, pid, session->state->chips[chip].number, offset, "level %d->%d", line->level, level);
    line->level = level;
    session->dirty = 1;
}

static void set_direction(struct session *session, int chip, int offset, long pid, int output)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    if (line->output == output) return;
    note(session, pid, session->state->chips[chip].number, offset, "dir %s", output ? "in->out" : "out->in");
    line->output = output;
    session->dirty = 1;
}

/* The kernel's gpiod_direction_output: the level first, then the direction; an active-low line inverts. */
static void drive_output(struct session *session, int chip, int offset, long pid, int logical)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    set_level(session, chip, offset, pid, (logical != 0) ^ ((line->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) != 0));
    set_direction(session, chip, offset, pid, 1);
}

/* Apply a line's configuration (a request or a reconfiguration): flags, then output / input / as is. */
static void configure_line(struct session *session, int chip, int offset, long pid, uint64_t flags, int logical)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    trace("configure line %d of chip %d: flags 0x%llx, output value %d", offset, session->state->chips[chip].number,
          (unsigned long long)flags, logical);
    if (line->flags != (flags & V2_KEPT)) session->dirty = 1;
    line->flags = flags & V2_KEPT;
    if (flags & GPIO_V2_LINE_FLAG_OUTPUT)
        drive_output(session, chip, offset, pid, logical);
    else if (flags & GPIO_V2_LINE_FLAG_INPUT)
        set_direction(session, chip, offset, pid, 0);
}

static void claim_line(struct session *session, int chip, int offset, long pid, unsigned long long start,
                       const char *consumer)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    line->pid = pid;
    line->start = start;
    snprintf(line->consumer, sizeof(line->consumer), "%s", consumer[0] ? consumer : "?");
    note(session, pid, session->state->chips[chip].number, offset, "request %s", line->consumer);
}

/* Release: the pinctrl driver either keeps a released output driven or turns it back into an input. */
static void release_line(struct session *session, int chip, int offset, const char *how)
{
    struct line_state *line = &session->state->chips[chip].lines[offset];
    long pid = line->pid;
    if (!pid) return;
    note(session, pid, session->state->chips[chip].number, offset, "%s", how);
    line->pid = 0;
    line->start = 0;
    line->flags = 0;
    line->consumer[0] = '\0';
    if (!session->state->keep_outputs) set_direction(session, chip, offset, pid, 0);
}

/* Lazy reaping: lines whose holder no longer exists are released, as the kernel did when it died. */
static void reap(struct session *session)
{
    int c, o;
    for (c = 0; c < session->state->nchips; c++)
        for (o = 0; o < session->state->chips[c].nlines; o++) {
            struct line_state *line = &session->state->chips[c].lines[o];
            if (line->pid && !holder_alive(line)) release_line(session, c, o, "release reaped");
        }
}

static int chip_index(const struct state *state, int number)
{
    int c;
    for (c = 0; c < state->nchips; c++)
        if (state->chips[c].number == number) return c;
    return -1;
}

/* ---- sessions ---------------------------------------------------------------------------------------------- */

static int begin(struct session *session, const struct paths *paths)
{
    int status;
    memset(session, 0, sizeof(*session));
    session->paths = paths;
    session->state = malloc(sizeof(struct state));
    if (!session->state) return -ENOMEM;
    session->lock_fd = real_open(paths->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (session->lock_fd < 0) {
        status = -errno;
        free(session->state);
        return status;
    }
    while (flock(session->lock_fd, LOCK_EX) != 0 && errno == EINTR) continue;
    status = load_state(paths, session->state);
    if (status == 0) reap(session);
    if (status != 0) {
        real_close(session->lock_fd);
        free(session->state);
    }
    return status;
}

static int end(struct session *session)
{
    int status = session->dirty ? save_state(session->paths, session->state) : 0;
    real_close(session->lock_fd);  /* closing drops the flock */
    free(session->state);
    return status;
}

/* ---- the per-process table of emulated fds ------------------------------------------------------------------ */

enum kind { CHIP_FD = 1, V2_REQUEST_FD, V1_HANDLE_FD };

struct tracked {
    int fd;
    enum kind kind;
    int chip;                  /* chip number */
    long owner;                /* the process that opened / requested it */
    unsigned long long start;  /* the owner's start time */
    int nlines;
    unsigned int offsets[MAX_LINES];
};

static struct tracked *table;
static size_t table_size;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static long requester;  /* this process has requested lines: its exit releases them */

static void table_lock_prepare(void) { pthread_mutex_lock(&table_lock); }
static void table_lock_release(void) { pthread_mutex_unlock(&table_lock); }

__attribute__((constructor)) static void at_load(void)
{
    /* A fork in the middle of another thread's table update must not leave the child's mutex locked. */
    pthread_atfork(table_lock_prepare, table_lock_release, table_lock_release);
}

static int find_slot(int fd)
{
    size_t i;
    for (i = 0; i < table_size; i++)
        if (table[i].fd == fd) return (int)i;
    return -1;
}

static int lookup(int fd, struct tracked *copy)
{
    int slot;
    pthread_mutex_lock(&table_lock);
    slot = find_slot(fd);
    if (slot >= 0) *copy = table[slot];
    pthread_mutex_unlock(&table_lock);
    return slot >= 0;
}

static int remember(const struct tracked *entry)
{
    int slot;
    struct tracked *grown;
    pthread_mutex_lock(&table_lock);
    slot = find_slot(-1);
    if (slot < 0) {
        grown = realloc(table, (table_size + 16) * sizeof(*table));
        if (!grown) {
            pthread_mutex_unlock(&table_lock);
            return -ENOMEM;
        }
        table = grown;
        for (slot = (int)table_size; slot < (int)table_size + 16; slot++) table[slot].fd = -1;
        slot = (int)table_size;
        table_size += 16;
    }
    table[slot] = *entry;
    pthread_mutex_unlock(&table_lock);
    return 0;
}

/*
 * Forget fd and return what it was. Only the owning process changes the table: a vfork child (Python's
 * subprocess) shares the parent's memory and closes inherited fds, which must not untrack the parent's.
 */
static int forget(int fd, struct tracked *copy, int owner_only)
{
    int slot, found = 0;
    pthread_mutex_lock(&table_lock);
    slot = find_slot(fd);
    if (slot >= 0 && (!owner_only || table[slot].owner == (long)getpid())) {
        *copy = table[slot];
        table[slot].fd = -1;
        found = 1;
    }
    pthread_mutex_unlock(&table_lock);
    return found;
}

/* Release the lines of a request fd that its owner closed (or replaced with dup2). */
static void release_request(const struct tracked *entry, const char *how)
{
    struct session session;
    int c, i;
    if (entry->kind == CHIP_FD || begin(&session, active()) != 0) return;
    c = chip_index(session.state, entry->chip);
    for (i = 0; c >= 0 && i < entry->nlines; i++) {
        struct line_state *line = &session.state->chips[c].lines[entry->offsets[i]];
        if (line->pid == entry->owner) release_line(&session, c, (int)entry->offsets[i], how);
    }
    end(&session);
}

static void closing(int fd)
{
    struct tracked entry;
    int saved = errno;
    if (!active() || !forget(fd, &entry, 1)) return;
    trace("close fd %d (kind %d)", fd, entry.kind);
    release_request(&entry, "release");
    errno = saved;
}

/* A new fd with a number we still track means the old one was closed behind our back (a raw syscall). */
static void fresh_fd(int fd)
{
    struct tracked entry;
    if (fd >= 0 && forget(fd, &entry, 0) && entry.owner == (long)getpid()) release_request(&entry, "release");
}

__attribute__((destructor)) static void at_exit(void)
{
    /* Normal exit: the kernel would close our fds now. Lines of a killed process are reaped later instead. */
    struct session session;
    int c, o;
    long me = (long)getpid();
    if (!active() || requester != me || begin(&session, active()) != 0) return;
    for (c = 0; c < session.state->nchips; c++)
        for (o = 0; o < session.state->chips[c].nlines; o++)
            if (session.state->chips[c].lines[o].pid == me) release_line(&session, c, o, "release");
    end(&session);
}

/* ---- opening a chip ---------------------------------------------------------------------------------------- */

/*
 * The chip whose placeholder /dev/gpiochipN is the file open on fd, or -1. Compared by inode, so symlinks
 * (/dev/gpiochip4 -> gpiochip0 on a Pi 5), relative paths and openat() work, and no /proc is needed.
 */
static int chip_of_fd(int fd, const struct state *state)
{
    struct stat file, placeholder;
    char path[64];
    int c;
    if (fstat(fd, &file) != 0 || !S_ISREG(file.st_mode)) return -1;
    for (c = 0; c < state->nchips; c++) {
        snprintf(path, sizeof(path), "/dev/gpiochip%d", state->chips[c].number);
        if (real_stat(path, &placeholder) == 0 && placeholder.st_dev == file.st_dev &&
            placeholder.st_ino == file.st_ino)
            return state->chips[c].number;
    }
    return -1;
}

static void track_chip(int fd, const char *path)
{
    struct session session;
    struct tracked entry;
    int number;
    fresh_fd(fd);
    if (!path || !strstr(path, "gpiochip") || begin(&session, active()) != 0) return;
    number = chip_of_fd(fd, session.state);
    end(&session);
    if (number < 0) return;
    memset(&entry, 0, sizeof(entry));
    entry.fd = fd;
    entry.kind = CHIP_FD;
    entry.chip = number;
    entry.owner = (long)getpid();
    if (remember(&entry) == 0) trace("open %s: chip %d on fd %d", path, number, fd);
}

/* After every successful open: is it a chip? The caller's errno is left as the real call set it. */
static int opened(int fd, const char *path)
{
    int saved = errno;
    if (fd >= 0 && active()) track_chip(fd, path);
    errno = saved;
    return fd;
}

/* ---- uAPI: chip ioctls ------------------------------------------------------------------------------------- */

static int fail(int error)
{
    errno = error;
    return -1;
}

static int all_zero(const void *data, size_t size)
{
    const unsigned char *bytes = data;
    size_t i;
    for (i = 0; i < size; i++)
        if (bytes[i]) return 0;
    return 1;
}

static int chip_info(int number, struct gpiochip_info *info)
{
    struct session session;
    int c, status = begin(&session, active());
    if (status) return fail(-status);
    c = chip_index(session.state, number);
    memset(info, 0, sizeof(*info));
    if (c >= 0) {
        snprintf(info->name, sizeof(info->name), "gpiochip%d", number);
        snprintf(info->label, sizeof(info->label), "%s", session.state->chips[c].label);
        info->lines = (uint32_t)session.state->chips[c].nlines;
    }
    end(&session);
    return c >= 0 ? 0 : fail(ENODEV);
}

static uint64_t v2_info_flags(const struct line_state *line)
{
    uint64_t flags = line->output ? GPIO_V2_LINE_FLAG_OUTPUT : GPIO_V2_LINE_FLAG_INPUT;
    if (line->pid) flags |= GPIO_V2_LINE_FLAG_USED | (line->flags & V2_KEPT);
    return flags;
}

/* Copy one line's public state out under the lock; fills *line and returns 0, or an errno. */
static int read_line(int number, unsigned int offset, struct line_state *line)
{
    struct session session;
    int c, status = begin(&session, active());
    if (status) return -status;
    c = chip_index(session.state, number);
    status = c < 0 ? ENODEV : offset >= (unsigned int)session.state->chips[c].nlines ? EINVAL : 0;
    if (!status) *line = session.state->chips[c].lines[offset];
    end(&session);
    return status;
}

static int v2_line_info(int number, struct gpio_v2_line_info *info)
{
    struct line_state line;
    unsigned int offset = info->offset;
    int status;
    if (!all_zero(info->padding, sizeof(info->padding))) return fail(EINVAL);
    if ((status = read_line(number, offset, &line)) != 0) return fail(status);
    memset(info, 0, sizeof(*info));
    info->offset = offset;
    snprintf(info->name, sizeof(info->name), "%s", line.name);
    if (line.pid) snprintf(info->consumer, sizeof(info->consumer), "%s", line.consumer);
    info->flags = v2_info_flags(&line);
    return 0;
}

static int v1_line_info(int number, struct gpioline_info *info)
{
    struct line_state line;
    unsigned int offset = info->line_offset;
    uint64_t flags;
    int status;
    if ((status = read_line(number, offset, &line)) != 0) return fail(status);
    flags = v2_info_flags(&line);
    memset(info, 0, sizeof(*info));
    info->line_offset = offset;
    snprintf(info->name, sizeof(info->name), "%s", line.name);
    if (line.pid) snprintf(info->consumer, sizeof(info->consumer), "%s", line.consumer);
    if (flags & GPIO_V2_LINE_FLAG_USED) info->flags |= GPIOLINE_FLAG_KERNEL;
    if (flags & GPIO_V2_LINE_FLAG_OUTPUT) info->flags |= GPIOLINE_FLAG_IS_OUT;
    if (flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) info->flags |= GPIOLINE_FLAG_ACTIVE_LOW;
    if (flags & GPIO_V2_LINE_FLAG_OPEN_DRAIN) info->flags |= GPIOLINE_FLAG_OPEN_DRAIN;
    if (flags & GPIO_V2_LINE_FLAG_OPEN_SOURCE) info->flags |= GPIOLINE_FLAG_OPEN_SOURCE;
    if (flags & GPIO_V2_LINE_FLAG_BIAS_PULL_UP) info->flags |= GPIOLINE_FLAG_BIAS_PULL_UP;
    if (flags & GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN) info->flags |= GPIOLINE_FLAG_BIAS_PULL_DOWN;
    if (flags & GPIO_V2_LINE_FLAG_BIAS_DISABLED) info->flags |= GPIOLINE_FLAG_BIAS_DISABLE;
    return 0;
}

/* gpio_v2_line_flags_validate(), then EINVAL for what is valid but not modelled (edge events). */
static int v2_flags_invalid(uint64_t flags)
{
    if (flags & ~(uint64_t)V2_VALID) return 1;
    if (flags & GPIO_V2_LINE_FLAG_EVENT_CLOCK_HTE) return 1;  /* kernels without CONFIG_HTE: EOPNOTSUPP */
    if ((flags & GPIO_V2_LINE_FLAG_INPUT) && (flags & GPIO_V2_LINE_FLAG_OUTPUT)) return 1;
    if ((flags & V2_EDGE) && !(flags & GPIO_V2_LINE_FLAG_INPUT)) return 1;
    if ((flags & GPIO_V2_LINE_FLAG_OPEN_DRAIN) && (flags & GPIO_V2_LINE_FLAG_OPEN_SOURCE)) return 1;
    if ((flags & V2_DRIVE) && !(flags & GPIO_V2_LINE_FLAG_OUTPUT)) return 1;
    if ((flags & V2_BIAS) && !(flags & V2_DIRECTION)) return 1;
    if (((flags & GPIO_V2_LINE_FLAG_BIAS_DISABLED) &&
         (flags & (GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN | GPIO_V2_LINE_FLAG_BIAS_PULL_UP))) ||
        ((flags & GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN) && (flags & GPIO_V2_LINE_FLAG_BIAS_PULL_UP)))
        return 1;
    if (flags & V2_EDGE) {
        trace("edge detection is not modelled");
        return 1;
    }
    return 0;
}

/* The flags of line i of a request: the first FLAGS attribute whose mask has it, else the config's. */
static uint64_t v2_config_flags(const struct gpio_v2_line_config *config, int i)
{
    unsigned int a;
    for (a = 0; a < config->num_attrs; a++)
        if (config->attrs[a].attr.id == GPIO_V2_LINE_ATTR_ID_FLAGS && (config->attrs[a].mask & (1ULL << i)))
            return config->attrs[a].attr.flags;
    return config->flags;
}

static int v2_config_value(const struct gpio_v2_line_config *config, int i)
{
    unsigned int a;
    for (a = 0; a < config->num_attrs; a++)
        if (config->attrs[a].attr.id == GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES && (config->attrs[a].mask & (1ULL << i)))
            return (config->attrs[a].attr.values >> i) & 1;
    return 0;
}

static int v2_config_debounced(const struct gpio_v2_line_config *config, int i)
{
    unsigned int a;
    for (a = 0; a < config->num_attrs; a++)
        if (config->attrs[a].attr.id == GPIO_V2_LINE_ATTR_ID_DEBOUNCE && (config->attrs[a].mask & (1ULL << i)))
            return 1;
    return 0;
}

static int v2_config_invalid(const struct gpio_v2_line_config *config, unsigned int nlines)
{
    unsigned int i;
    if (config->num_attrs > GPIO_V2_LINE_NUM_ATTRS_MAX || !all_zero(config->padding, sizeof(config->padding)))
        return 1;
    for (i = 0; i < nlines; i++) {
        uint64_t flags = v2_config_flags(config, (int)i);
        if (v2_flags_invalid(flags)) return 1;
        if (v2_config_debounced(config, (int)i) && !(flags & GPIO_V2_LINE_FLAG_INPUT)) return 1;
    }
    return 0;
}

static uint64_t v1_to_v2_flags(uint32_t flags)
{
    uint64_t out = 0;
    if (flags & GPIOHANDLE_REQUEST_INPUT) out |= GPIO_V2_LINE_FLAG_INPUT;
    if (flags & GPIOHANDLE_REQUEST_OUTPUT) out |= GPIO_V2_LINE_FLAG_OUTPUT;
    if (flags & GPIOHANDLE_REQUEST_ACTIVE_LOW) out |= GPIO_V2_LINE_FLAG_ACTIVE_LOW;
    if (flags & GPIOHANDLE_REQUEST_OPEN_DRAIN) out |= GPIO_V2_LINE_FLAG_OPEN_DRAIN;
    if (flags & GPIOHANDLE_REQUEST_OPEN_SOURCE) out |= GPIO_V2_LINE_FLAG_OPEN_SOURCE;
    if (flags & GPIOHANDLE_REQUEST_BIAS_PULL_UP) out |= GPIO_V2_LINE_FLAG_BIAS_PULL_UP;
    if (flags & GPIOHANDLE_REQUEST_BIAS_PULL_DOWN) out |= GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN;
    if (flags & GPIOHANDLE_REQUEST_BIAS_DISABLE) out |= GPIO_V2_LINE_FLAG_BIAS_DISABLED;
    return out;
}

/* linehandle_validate_flags() */
static int v1_flags_invalid(uint32_t flags)
{
    uint32_t bias = flags & (GPIOHANDLE_REQUEST_BIAS_PULL_UP | GPIOHANDLE_REQUEST_BIAS_PULL_DOWN |
                             GPIOHANDLE_REQUEST_BIAS_DISABLE);
    if (flags & ~(uint32_t)V1_VALID) return 1;
    if ((flags & GPIOHANDLE_REQUEST_INPUT) && (flags & GPIOHANDLE_REQUEST_OUTPUT)) return 1;
    if ((flags & GPIOHANDLE_REQUEST_OPEN_DRAIN) && (flags & GPIOHANDLE_REQUEST_OPEN_SOURCE)) return 1;
    if (!(flags & GPIOHANDLE_REQUEST_OUTPUT) &&
        (flags & (GPIOHANDLE_REQUEST_OPEN_DRAIN | GPIOHANDLE_REQUEST_OPEN_SOURCE)))
        return 1;
    if (!(flags & (GPIOHANDLE_REQUEST_INPUT | GPIOHANDLE_REQUEST_OUTPUT)) && bias) return 1;
    return bias & (bias - 1) ? 1 : 0;  /* more than one bias flag */
}

/* What one request asks of each of its lines, v1 and v2 alike. */
struct request {
    int chip;
    unsigned int nlines;
    unsigned int offsets[MAX_LINES];
    uint64_t flags[MAX_LINES];
    int values[MAX_LINES];
    char consumer[NAME_LEN];
};

/*
 * linereq_create() / linehandle_create(): the lines are requested and configured one at a time; if one fails
 * (out of range: EINVAL, held: EBUSY) those already requested are released again, with release semantics.
 * Returns the new request fd, or -1 with errno.
 */
static int request_lines(const struct request *request, enum kind kind)
{
    struct session session;
    struct tracked entry;
    long me = (long)getpid();
    unsigned long long start = start_time(me);
    unsigned int i, claimed = 0;
    int c, fd = -1, error = 0, status = begin(&session, active());
    if (status) return fail(-status);
    c = chip_index(session.state, request->chip);
    if (c < 0) error = ENODEV;
    for (i = 0; !error && i < request->nlines; i++) {
        unsigned int offset = request->offsets[i];
        if (offset >= (unsigned int)session.state->chips[c].nlines) {
            error = EINVAL;
        } else if (session.state->chips[c].lines[offset].pid) {
            error = EBUSY;
        } else {
            claim_line(&session, c, (int)offset, me, start, request->consumer);
            configure_line(&session, c, (int)offset, me, request->flags[i], request->values[i]);
            claimed++;
        }
    }
    if (!error && (fd = eventfd(0, EFD_CLOEXEC)) < 0) error = errno;
    for (i = 0; error && i < claimed; i++) release_line(&session, c, (int)request->offsets[i], "release");
    end(&session);
    if (error) return fail(error);
    fresh_fd(fd);
    memset(&entry, 0, sizeof(entry));
    entry.fd = fd;
    entry.kind = kind;
    entry.chip = request->chip;
    entry.owner = me;
    entry.start = start;
    entry.nlines = (int)request->nlines;
    memcpy(entry.offsets, request->offsets, sizeof(entry.offsets));
    remember(&entry);
    requester = me;
    return fd;
}

static int v2_get_line(int number, struct gpio_v2_line_request *user)
{
    struct request request;
    unsigned int i;
    int fd;
    if (user->num_lines < 1 || user->num_lines > GPIO_V2_LINES_MAX || !all_zero(user->padding, sizeof(user->padding)))
        return fail(EINVAL);
    if (v2_config_invalid(&user->config, user->num_lines)) return fail(EINVAL);
    memset(&request, 0, sizeof(request));
    request.chip = number;
    request.nlines = user->num_lines;
    snprintf(request.consumer, sizeof(request.consumer), "%.*s", NAME_LEN - 1, user->consumer);
    for (i = 0; i < user->num_lines; i++) {
        request.offsets[i] = user->offsets[i];
        request.flags[i] = v2_config_flags(&user->config, (int)i);
        request.values[i] = v2_config_value(&user->config, (int)i);
    }
    if ((fd = request_lines(&request, V2_REQUEST_FD)) < 0) return -1;
    user->fd = fd;
    return 0;
}

static int v1_get_handle(int number, struct gpiohandle_request *user)
{
    struct request request;
    unsigned int i;
    int fd;
    if (user->lines == 0 || user->lines > GPIOHANDLES_MAX || v1_flags_invalid(user->flags)) return fail(EINVAL);
    memset(&request, 0, sizeof(request));
    request.chip = number;
    request.nlines = user->lines;
    snprintf(request.consumer, sizeof(request.consumer), "%.*s", NAME_LEN - 1, user->consumer_label);
    for (i = 0; i < user->lines; i++) {
        request.offsets[i] = user->lineoffsets[i];
        request.flags[i] = v1_to_v2_flags(user->flags);
        request.values[i] = user->default_values[i] != 0;
    }
    if ((fd = request_lines(&request, V1_HANDLE_FD)) < 0) return -1;
    user->fd = fd;
    return 0;
}

/* ---- uAPI: request fd ioctls ------------------------------------------------------------------------------- */

/* A session on the lines of a request; -1 (errno set) if the request no longer holds them (e.g. a reboot()). */
static int begin_request(struct session *session, const struct tracked *entry, int *chip)
{
    int i, status = begin(session, active());
    if (status) return fail(-status);
    *chip = chip_index(session->state, entry->chip);
    for (i = 0; *chip >= 0 && i < entry->nlines; i++)
        if (session->state->chips[*chip].lines[entry->offsets[i]].pid != entry->owner) break;
    if (*chip < 0 || i < entry->nlines) {
        end(session);
        return fail(ENODEV);
    }
    return 0;
}

static int logical_level(const struct line_state *line)
{
    return line->level ^ ((line->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) != 0);
}

static int v2_get_values(const struct tracked *entry, struct gpio_v2_line_values *values)
{
    struct session session;
    int c, i;
    if (!values->mask) return fail(EINVAL);
    if (begin_request(&session, entry, &c)) return -1;
    values->bits = 0;
    for (i = 0; i < entry->nlines; i++)
        if ((values->mask & (1ULL << i)) && logical_level(&session.state->chips[c].lines[entry->offsets[i]]))
            values->bits |= 1ULL << i;
    end(&session);
    return 0;
}

static int v2_set_values(const struct tracked *entry, const struct gpio_v2_line_values *values)
{
    struct session session;
    int c, i;
    long me = (long)getpid();
    if (!values->mask) return fail(EINVAL);
    if (begin_request(&session, entry, &c)) return -1;
    for (i = 0; i < entry->nlines; i++)
        if ((values->mask & (1ULL << i)) && !session.state->chips[c].lines[entry->offsets[i]].output) {
            end(&session);
            return fail(EPERM);
        }
    for (i = 0; i < entry->nlines; i++)
        if (values->mask & (1ULL << i)) drive_output(&session, c, (int)entry->offsets[i], me, (values->bits >> i) & 1);
    return end(&session) ? fail(EIO) : 0;
}

static int v2_set_config(const struct tracked *entry, const struct gpio_v2_line_config *config)
{
    struct session session;
    int c, i;
    long me = (long)getpid();
    if (v2_config_invalid(config, (unsigned int)entry->nlines)) return fail(EINVAL);
    if (begin_request(&session, entry, &c)) return -1;
    for (i = 0; i < entry->nlines; i++)
        configure_line(&session, c, (int)entry->offsets[i], me, v2_config_flags(config, i), v2_config_value(config, i));
    return end(&session) ? fail(EIO) : 0;
}

static int v1_get_values(const struct tracked *entry, struct gpiohandle_data *data)
{
    struct session session;
    int c, i;
    if (begin_request(&session, entry, &c)) return -1;
    memset(data, 0, sizeof(*data));
    for (i = 0; i < entry->nlines; i++)
        data->values[i] = (uint8_t)logical_level(&session.state->chips[c].lines[entry->offsets[i]]);
    end(&session);
    return 0;
}

/* linehandle_ioctl(): as in the kernel, only the first line is checked for being an output. */
static int v1_set_values(const struct tracked *entry, const struct gpiohandle_data *data)
{
    struct session session;
    int c, i;
    long me = (long)getpid();
    if (begin_request(&session, entry, &c)) return -1;
    if (!session.state->chips[c].lines[entry->offsets[0]].output) {
        end(&session);
        return fail(EPERM);
    }
    for (i = 0; i < entry->nlines; i++) drive_output(&session, c, (int)entry->offsets[i], me, data->values[i] != 0);
    return end(&session) ? fail(EIO) : 0;
}

static int v1_set_config(const struct tracked *entry, const struct gpiohandle_config *config)
{
    struct session session;
    int c, i;
    long me = (long)getpid();
    if (v1_flags_invalid(config->flags)) return fail(EINVAL);
    if (begin_request(&session, entry, &c)) return -1;
    for (i = 0; i < entry->nlines; i++)
        configure_line(&session, c, (int)entry->offsets[i], me, v1_to_v2_flags(config->flags),
                       config->default_values[i] != 0);
    return end(&session) ? fail(EIO) : 0;
}

static int emulated_ioctl(const struct tracked *entry, unsigned long request, void *arg)
{
    if (!arg) return fail(EFAULT);
    if (entry->kind == CHIP_FD) {
        switch (request) {
        case GPIO_GET_CHIPINFO_IOCTL: return chip_info(entry->chip, arg);
        case GPIO_V2_GET_LINEINFO_IOCTL: return v2_line_info(entry->chip, arg);
        case GPIO_V2_GET_LINE_IOCTL: return v2_get_line(entry->chip, arg);
        case GPIO_GET_LINEINFO_IOCTL: return v1_line_info(entry->chip, arg);
        case GPIO_GET_LINEHANDLE_IOCTL: return v1_get_handle(entry->chip, arg);
        }
    } else if (entry->kind == V2_REQUEST_FD) {
        switch (request) {
        case GPIO_V2_LINE_GET_VALUES_IOCTL: return v2_get_values(entry, arg);
        case GPIO_V2_LINE_SET_VALUES_IOCTL: return v2_set_values(entry, arg);
        case GPIO_V2_LINE_SET_CONFIG_IOCTL: return v2_set_config(entry, arg);
        }
    } else {
        switch (request) {
        case GPIOHANDLE_GET_LINE_VALUES_IOCTL: return v1_get_values(entry, arg);
        case GPIOHANDLE_SET_LINE_VALUES_IOCTL: return v1_set_values(entry, arg);
        case GPIOHANDLE_SET_CONFIG_IOCTL: return v1_set_config(entry, arg);
        }
    }
    trace("ioctl 0x%lx on fd %d is not modelled: ENOTTY", request, entry->fd);
    return fail(ENOTTY);
}

/* ---- /proc/device-tree ------------------------------------------------------------------------------------- */

static const char device_tree[] = "/proc/device-tree";
static const char device_tree_target[] = "/sys/firmware/devicetree/base";

static const char *redirect(const char *path, char *buffer, size_t size)
{
    size_t length = sizeof(device_tree) - 1;
    if (!path || !active() || strncmp(path, device_tree, length) != 0 || (path[length] && path[length] != '/'))
        return path;
    snprintf(buffer, size, "%s%s", device_tree_target, path + length);
    return buffer;
}

#define REDIRECTED(path) redirect((path), (char[PATH_MAX]){0}, PATH_MAX)

/* ---- the interposed libc functions ------------------------------------------------------------------------- */

static mode_t mode_argument(int flags, va_list args)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(args, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list args;
    mode_t mode;
    va_start(args, flags);
    mode = mode_argument(flags, args);
    va_end(args);
    need_real();
    return opened(real_open(REDIRECTED(path), flags, mode), path);
}

int open64(const char *path, int flags, ...)
{
    va_list args;
    mode_t mode;
    va_start(args, flags);
    mode = mode_argument(flags, args);
    va_end(args);
    need_real();
    return opened(real_open64(REDIRECTED(path), flags, mode), path);
}

int openat(int dir, const char *path, int flags, ...)
{
    va_list args;
    mode_t mode;
    va_start(args, flags);
    mode = mode_argument(flags, args);
    va_end(args);
    need_real();
    return opened(real_openat(dir, REDIRECTED(path), flags, mode), path);
}

int openat64(int dir, const char *path, int flags, ...)
{
    va_list args;
    mode_t mode;
    va_start(args, flags);
    mode = mode_argument(flags, args);
    va_end(args);
    need_real();
    return opened(real_openat64(dir, REDIRECTED(path), flags, mode), path);
}

int __open_2(const char *path, int flags)
{
    need_real();
    return opened(real_open_2(REDIRECTED(path), flags), path);
}

int __open64_2(const char *path, int flags)
{
    need_real();
    return opened(real_open64_2(REDIRECTED(path), flags), path);
}

int __openat_2(int dir, const char *path, int flags)
{
    need_real();
    return opened(real_openat_2(dir, REDIRECTED(path), flags), path);
}

int __openat64_2(int dir, const char *path, int flags)
{
    need_real();
    return opened(real_openat64_2(dir, REDIRECTED(path), flags), path);
}

FILE *fopen(const char *path, const char *mode)
{
    FILE *file;
    need_real();
    file = real_fopen(REDIRECTED(path), mode);
    if (file) opened(fileno(file), path);
    return file;
}

FILE *fopen64(const char *path, const char *mode)
{
    FILE *file;
    need_real();
    file = real_fopen64(REDIRECTED(path), mode);
    if (file) opened(fileno(file), path);
    return file;
}

int close(int fd)
{
    need_real();
    closing(fd);
    return real_close(fd);
}

int close_range(unsigned int first, unsigned int last, int flags)
{
    int fds[256], count = 0, i;
    size_t slot;
    need_real();
    if (!(flags & CLOSE_RANGE_CLOEXEC) && active()) {
        pthread_mutex_lock(&table_lock);
        for (slot = 0; slot < table_size && count < 256; slot++)
            if (table[slot].fd >= 0 && (unsigned int)table[slot].fd >= first && (unsigned int)table[slot].fd <= last)
                fds[count++] = table[slot].fd;
        pthread_mutex_unlock(&table_lock);
        for (i = 0; i < count; i++) closing(fds[i]);
    }
    return real_close_range(first, last, flags);
}

int dup2(int old, int new)
{
    need_real();
    if (old != new) closing(new);  /* dup2 closes the old file at new first */
    return real_dup2(old, new);
}

int dup3(int old, int new, int flags)
{
    need_real();
    if (old != new) closing(new);
    return real_dup3(old, new, flags);
}

int ioctl(int fd, unsigned long request, ...)
{
    struct tracked entry;
    va_list args;
    void *arg;
    int status;
    va_start(args, request);
    arg = va_arg(args, void *);
    va_end(args);
    if (!active() || !lookup(fd, &entry)) return real_ioctl(fd, request, arg);
    status = emulated_ioctl(&entry, request, arg);
    trace("ioctl fd %d request 0x%lx -> %d (%s)", fd, request, status, status ? strerror(errno) : "ok");
    return status;
}

int stat(const char *path, struct stat *info)
{
    need_real();
    return real_stat(REDIRECTED(path), info);
}

int stat64(const char *path, struct stat64 *info)
{
    need_real();
    return real_stat64(REDIRECTED(path), info);
}

int lstat(const char *path, struct stat *info)
{
    need_real();
    return real_lstat(REDIRECTED(path), info);
}

int lstat64(const char *path, struct stat64 *info)
{
    need_real();
    return real_lstat64(REDIRECTED(path), info);
}

int fstatat(int dir, const char *path, struct stat *info, int flags)
{
    need_real();
    return real_fstatat(dir, REDIRECTED(path), info, flags);
}

int fstatat64(int dir, const char *path, struct stat64 *info, int flags)
{
    need_real();
    return real_fstatat64(dir, REDIRECTED(path), info, flags);
}

int statx(int dir, const char *path, int flags, unsigned int mask, struct statx *info)
{
    need_real();
    return real_statx(dir, REDIRECTED(path), flags, mask, info);
}

int access(const char *path, int mode)
{
    need_real();
    return real_access(REDIRECTED(path), mode);
}

int faccessat(int dir, const char *path, int mode, int flags)
{
    need_real();
    return real_faccessat(dir, REDIRECTED(path), mode, flags);
}

DIR *opendir(const char *path)
{
    need_real();
    return real_opendir(REDIRECTED(path));
}

ssize_t readlink(const char *path, char *buffer, size_t size)
{
    size_t length = sizeof(device_tree_target) - 1;
    need_real();
    if (!active() || strcmp(path, device_tree) != 0) return real_readlink(REDIRECTED(path), buffer, size);
    if (length > size) length = size;  /* readlink truncates silently */
    memcpy(buffer, device_tree_target, length);
    return (ssize_t)length;
}

/* ---- entry points for the harness (loaded with ctypes, not preloaded) --------------------------------------- */

/* Release the lines of dead holders now, so the harness reads the state a running kernel would show. */
int gpioshim_reap(const char *state, const char *history)
{
    struct paths paths;
    struct session session;
    int status;
    need_real();
    set_paths(&paths, state, history);
    if ((status = begin(&session, &paths)) != 0) return status;
    return end(&session);
}

/* A reboot: every line an input at level 0, free; the history gets one marker. */
int gpioshim_reboot(const char *state, const char *history, const char *boot_id)
{
    struct paths paths;
    struct session session;
    int c, o, status;
    need_real();
    set_paths(&paths, state, history);
    if ((status = begin(&session, &paths)) != 0) return status;
    for (c = 0; c < session.state->nchips; c++)
        for (o = 0; o < session.state->chips[c].nlines; o++) {
            struct line_state *line = &session.state->chips[c].lines[o];
            line->output = line->level = 0;
            line->pid = 0;
            line->start = 0;
            line->flags = 0;
            line->consumer[0] = '\0';
        }
    note(&session, 0, -1, -1, "reboot %s", boot_id);
    return end(&session);
}
