/* Test harness only: steps one process's wall clock, never the machine's.
 *
 * LD_PRELOAD'ed into a daemon under test, it adds the number of seconds written in the file
 * named by $WALL_OFFSET_FILE to CLOCK_REALTIME (clock_gettime, gettimeofday, time). The
 * monotonic and boot-time clocks are left alone, exactly as a real clock step leaves them.
 * The file is read again at most every 50 ms of monotonic time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static double offset;
static struct timespec checked;

static void refresh(void) {
    struct timespec now;
    if (!real_clock_gettime)
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    double since = (now.tv_sec - checked.tv_sec) + (now.tv_nsec - checked.tv_nsec) / 1e9;
    if (checked.tv_sec != 0 && since < 0.05)
        return;
    checked = now;
    const char *path = getenv("WALL_OFFSET_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return;
    double value;
    if (fscanf(f, "%lf", &value) == 1)
        offset = value;
    fclose(f);
}

static void shift(struct timespec *ts) {
    long long ns = (long long)(offset * 1e9);
    long long total = ts->tv_nsec + ns % 1000000000LL;
    ts->tv_sec += ns / 1000000000LL + total / 1000000000LL;
    ts->tv_nsec = total % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    refresh();
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
