// helper.c — moat-helper: what makes sure nothing moat starts outlives it (the kernel's help, not
// exit hooks, which a SIGKILL or a crash never runs).
//
//   moat-helper exec PPID [--pidns] -- CMD [ARGS...]
//     The process dies with moat: PR_SET_PDEATHSIG(SIGKILL), set here, after the fork from moat's
//     main thread (where Node spawns children), then CMD is executed in its place. If moat (PPID)
//     is already gone, nothing runs. With --pidns, CMD runs in a new PID namespace under an init
//     (this program) that dies with moat too: when a namespace's init dies, the kernel kills every
//     process in it, so whatever CMD started, daemons included, ends with it. The init passes on
//     the signals sent to it (kill(2), not the terminal's, which reach CMD directly), reaps
//     orphans, and ends when CMD does, with CMD's status: the same exit code, or the same signal.
//     A CMD that cannot be executed: a message on stderr, status 127 (not found) or 126.
//
//   moat-helper janitor
//     Removes what a moat process created if it ends without doing so itself. Started by moat
//     with a pipe on stdin; it reads lines, then, at end of file (moat ended, however), removes
//     what is still registered, last first:
//       +ID netns NAME LEASE TOKEN   the namespace /run/netns/NAME and /etc/netns/NAME, if the
//                                    lease file LEASE still holds TOKEN (it is still ours)
//       +ID tree PATH                a directory and everything in it
//       +ID owned PATH TOKEN         an ownership file, if it still holds TOKEN
//       -ID                          forget ID (moat removed it)
//     Fields are separated by tabs. It ignores the terminal's and moat's signals (it is in its
//     own session) so that a Ctrl-C that ends moat does not end it first.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const int FORWARDED[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM};
#define NFORWARDED (sizeof FORWARDED / sizeof FORWARDED[0])

static void die_with_parent(pid_t expected) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (expected > 0 && getppid() != expected) _exit(125);  // moat is already gone
}

static void forwarded_set(sigset_t* set) {
  sigemptyset(set);
  for (size_t i = 0; i < NFORWARDED; i++) sigaddset(set, FORWARDED[i]);
  sigaddset(set, SIGCHLD);
}

static void exec_or_die(char** argv, const sigset_t* oldmask) {
  sigprocmask(SIG_SETMASK, oldmask, NULL);
  execvp(argv[0], argv);
  int e = errno;
  fprintf(stderr, "moat: cannot run %s: %s\n", argv[0], strerror(e));
  _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
}

// End the way the process we waited for ended: its exit code, or its signal.
static void end_like(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);  // its core, if any, was dumped already
    signal(sig, SIG_DFL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);  // a signal this process may not die of (init of a PID namespace)
  }
  _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 125);
}

// Wait for `child`, passing on the signals sent to us (not the terminal's: si_code SI_KERNEL);
// reap any other child (as a namespace's init). Returns child's wait status.
static int supervise(pid_t child, const sigset_t* set) {
  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(set, &si);
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      int status;
      pid_t p;
      while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
        if (p == child) return status;
      }
      continue;
    }
    if (si.si_code == SI_USER || si.si_code == SI_QUEUE || si.si_code == SI_TKILL) kill(child, sig);
  }
}

static int cmd_exec(int argc, char** argv) {
  // moat-helper exec PPID [--pidns] -- CMD...
  if (argc < 4) {
    fprintf(stderr, "usage: moat-helper exec PPID [--pidns] -- CMD [ARGS...]\n");
    return 125;
  }
  pid_t ppid = (pid_t)atol(argv[2]);
  int i = 3, pidns = 0;
  if (strcmp(argv[i], "--pidns") == 0) { pidns = 1; i++; }
  if (i >= argc || strcmp(argv[i], "--") != 0 || i + 1 >= argc) {
    fprintf(stderr, "moat-helper exec: expected -- CMD\n");
    return 125;
  }
  char** cmd = argv + i + 1;
  die_with_parent(ppid);
  sigset_t set, oldmask;
  forwarded_set(&set);
  sigprocmask(SIG_BLOCK, &set, &oldmask);
  if (!pidns || unshare(CLONE_NEWPID) != 0) exec_or_die(cmd, &oldmask);  // no PID namespace (not allowed here): pdeathsig only
  // The next child is init (pid 1) of the new namespace; a pipe tells it if we die before it set
  // its own pdeathsig (its getppid() is 0: the parent is outside the namespace).
  // Another carries CMD's wait status out of it (init cannot die of CMD's signal).
  int life[2], st[2];
  if (pipe2(life, O_CLOEXEC) != 0 || pipe2(st, O_CLOEXEC) != 0) exec_or_die(cmd, &oldmask);
  pid_t init = fork();
  if (init < 0) exec_or_die(cmd, &oldmask);
  if (init == 0) {
    close(life[1]);
    close(st[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct pollfd pf = {life[0], POLLIN, 0};
    if (poll(&pf, 1, 0) > 0) _exit(125);  // the outer helper is gone already (EOF)
    close(life[0]);
    pid_t c = fork();
    if (c < 0) _exit(125);
    if (c == 0) exec_or_die(cmd, &oldmask);
    int status = supervise(c, &set);
    if (write(st[1], &status, sizeof status) != sizeof status) { /* the outer helper is gone */ }
    _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WIFEXITED(status) ? WEXITSTATUS(status) : 125);
    // init's end kills whatever is left in the namespace.
  }
  close(life[0]);
  close(st[1]);
  int status = supervise(init, &set);
  int cmd_status;
  if (read(st[0], &cmd_status, sizeof cmd_status) == sizeof cmd_status) status = cmd_status;
  end_like(status);
  return 125;
}

// ---- janitor ------------------------------------------------------------------------------------

struct entry {
  char* id;
  char* kind;
  char* a;
  char* b;
  char* c;
  struct entry* prev;
};

static int rm_one(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st; (void)ftw;
  if (flag == FTW_DP || flag == FTW_D) rmdir(path);
  else unlink(path);
  return 0;
}

static void rm_tree(const char* path) {
  nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

static int file_holds(const char* path, const char* token) {
  char buf[4096];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  return strstr(buf, token) != NULL;
}

static void clean(struct entry* e) {
  char path[4200];
  if (strcmp(e->kind, "netns") == 0 && e->a && e->b && e->c) {
    if (strchr(e->a, '/') || !file_holds(e->b, e->c)) return;  // the slot is another moat's now
    snprintf(path, sizeof path, "/run/netns/%s", e->a);
    umount2(path, MNT_DETACH);
    unlink(path);
    snprintf(path, sizeof path, "/etc/netns/%s", e->a);
    rm_tree(path);
  } else if (strcmp(e->kind, "tree") == 0 && e->a && e->a[0] == '/') {
    rm_tree(e->a);
  } else if (strcmp(e->kind, "owned") == 0 && e->a && e->b) {
    if (file_holds(e->a, e->b)) unlink(e->a);
  }
}

static char* field(char** s) {
  if (!*s) return NULL;
  char* f = *s;
  char* tab = strchr(f, '\t');
  if (tab) { *tab = 0; *s = tab + 1; } else *s = NULL;
  return f;
}

static int cmd_janitor(void) {
  setsid();
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP || s == SIGCHLD) continue;
    signal(s, SIG_IGN);
  }
  if (chdir("/") != 0) { /* nothing to do about it */ }
  struct entry* last = NULL;
  char* line = NULL;
  size_t cap = 0;
  ssize_t n;
  FILE* in = fdopen(0, "r");
  if (!in) return 1;
  while ((n = getline(&line, &cap, in)) >= 0) {
    if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
    if (n < 2) continue;
    if (line[0] == '+') {
      char* rest = line + 1;
      struct entry* e = calloc(1, sizeof *e);
      if (!e) continue;
      char* id = field(&rest);
      char* kind = field(&rest);
      char* a = field(&rest);
      char* b = field(&rest);
      char* c = field(&rest);
      e->id = strdup(id ? id : "");
      e->kind = strdup(kind ? kind : "");
      e->a = a ? strdup(a) : NULL;
      e->b = b ? strdup(b) : NULL;
      e->c = c ? strdup(c) : NULL;
      e->prev = last;
      last = e;
    } else if (line[0] == '-') {
      for (struct entry** p = &last; *p; p = &(*p)->prev) {
        if (strcmp((*p)->id, line + 1) == 0) {
          struct entry* gone = *p;
          *p = gone->prev;
          free(gone->id); free(gone->kind); free(gone->a); free(gone->b); free(gone->c); free(gone);
          break;
        }
      }
    }
  }
  for (struct entry* e = last; e; e = e->prev) clean(e);
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "exec") == 0) return cmd_exec(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "janitor") == 0) return cmd_janitor();
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    puts("moat-helper 1");
    return 0;
  }
  fprintf(stderr, "usage: moat-helper exec PPID [--pidns] -- CMD [ARGS...] | moat-helper janitor\n");
  return 125;
}
