// helper.c — moat-helper: what makes sure nothing moat starts outlives it (the kernel's help, not
// exit hooks, which a SIGKILL or a crash never runs).
//
//   moat-helper exec PPID [--pidns] -- CMD [ARGS...]
//     The process dies with moat: PR_SET_PDEATHSIG(SIGKILL), set here, after the fork from moat's
//     main thread (where Node spawns children), then CMD is executed in its place. If moat (PPID)
//     is already gone, nothing runs. With --pidns, CMD runs in a new PID namespace under an init
//     (this program) that dies with moat too (it watches moat's pidfd): when a namespace's init
//     dies, the kernel kills every process in it, so whatever CMD started, daemons included, ends
//     with moat. This process passes on the signals sent to it (kill(2), not the terminal's, which
//     reach CMD directly) and ends when CMD does, with CMD's status: the same exit code, or the
//     same signal. What CMD left running stays (its connections get moat's exit grace) until moat
//     kills it or dies. A CMD that cannot be executed: a message on stderr, 127 (not found) or 126.
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
#include <sys/signalfd.h>
#include <sys/syscall.h>
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

static int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

static int sent_by_process(const struct signalfd_siginfo* si) {
  return si->ssi_code == SI_USER || si->ssi_code == SI_QUEUE || si->ssi_code == SI_TKILL;
}

// init of the PID namespace: runs CMD, passes signals on, reaps orphans. CMD's wait status goes
// out through `st` as soon as CMD ends; init itself stays while anything else runs in the
// namespace (moat drains those processes' connections, then kills them), and ends — killing all
// that is left — when moat dies (its pidfd `moat` becomes readable; without pidfds, init dies with
// the outer helper instead, at CMD's end).
static void run_init(char** cmd, const sigset_t* set, const sigset_t* oldmask, int moat, int st) {
  pid_t c = fork();
  if (c < 0) _exit(125);
  if (c == 0) exec_or_die(cmd, oldmask);
  int sfd = signalfd(-1, set, SFD_CLOEXEC);
  if (sfd < 0) _exit(125);
  int cmd_done = 0;
  for (;;) {
    struct pollfd pf[2] = {{sfd, POLLIN, 0}, {moat, POLLIN, 0}};
    if (poll(pf, moat >= 0 ? 2 : 1, -1) < 0) continue;
    if (moat >= 0 && pf[1].revents) _exit(125);  // moat is gone: everything in here goes too
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != sizeof si) continue;
    if ((int)si.ssi_signo != SIGCHLD) {
      if (sent_by_process(&si)) kill(cmd_done ? -1 : c, (int)si.ssi_signo);
      continue;
    }
    int status;
    pid_t p;
    while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
      if (p != c) continue;
      cmd_done = 1;
      if (write(st, &status, sizeof status) != sizeof status) { /* the outer helper is gone */ }
      close(st);
      if (moat < 0) _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WIFEXITED(status) ? WEXITSTATUS(status) : 125);
    }
    if (cmd_done && p < 0 && errno == ECHILD) _exit(0);  // nothing runs in the namespace any more
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
  // moat's pidfd, for init to watch (it cannot see moat's pid from inside its namespace); checked
  // to be moat's by asking for the parent again after opening it.
  int moat = ppid > 0 ? open_pidfd(ppid) : -1;
  if (moat >= 0 && getppid() != ppid) _exit(125);
  // The next child is init (pid 1) of the new namespace; `life` tells it if we die before it is
  // set up, `st` carries CMD's wait status out of it.
  int life[2], st[2];
  if (pipe2(life, O_CLOEXEC) != 0 || pipe2(st, O_CLOEXEC) != 0) exec_or_die(cmd, &oldmask);
  pid_t init = fork();
  if (init < 0) exec_or_die(cmd, &oldmask);
  if (init == 0) {
    close(life[1]);
    close(st[0]);
    if (moat < 0) prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct pollfd pf = {life[0], POLLIN, 0};
    if (poll(&pf, 1, 0) > 0) _exit(125);  // the outer helper is gone already (EOF)
    close(life[0]);
    run_init(cmd, &set, &oldmask, moat, st[1]);
  }
  close(life[0]);
  close(st[1]);
  if (moat >= 0) close(moat);
  // Until CMD's status arrives (or init ends without one): signals sent to us go to init.
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  for (;;) {
    struct pollfd pf[2] = {{st[0], POLLIN, 0}, {sfd, POLLIN, 0}};
    if (poll(pf, sfd >= 0 ? 2 : 1, -1) < 0) continue;
    if (pf[0].revents) {
      int status;
      if (read(st[0], &status, sizeof status) == sizeof status) end_like(status);
      int s;
      waitpid(init, &s, 0);  // init ended without a status
      end_like(s);
    }
    struct signalfd_siginfo si;
    if (sfd >= 0 && pf[1].revents && read(sfd, &si, sizeof si) == sizeof si && (int)si.ssi_signo != SIGCHLD && sent_by_process(&si)) kill(init, (int)si.ssi_signo);
  }
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
