/* moat-sandbox.c — what confines the commands of a namespace sandbox.
 *
 * Theory of operation
 * -------------------
 * A namespace sandbox is a set of namespaces held by one process, the *holder*, and joined by
 * every command the sandbox runs:
 *
 *   user    its root (uid and gid 0) is one unprivileged host uid and gid (--uid, --gid); nothing
 *           else is mapped, and setgroups(2) is denied. Every namespace below is created together
 *           with it and owned by it, so root inside holds capabilities over the sandbox's own
 *           network, mounts and processes and over nothing of the host's.
 *   net     the sandbox's network: moat's engine creates eth0 (a TAP device) in it and moat
 *           configures it from outside (as host root, or as the owner of the user namespace).
 *   mnt     the host's filesystem read-only, every mount of it, with a fresh /proc (this PID
 *           namespace's processes only), a fresh /sys where the kernel allows it (this network
 *           namespace's devices), a minimal /dev (null, zero, full, random, urandom, tty, a
 *           private devpts, /dev/shm), empty private tmpfs on /tmp and /run (so the host's
 *           sockets there — X11, tmux, ssh-agent, D-Bus, /run/user — are out of reach), and each
 *           entry of --etc DIR bound read-only over its name under /etc (resolv.conf, the TLS
 *           trust store), as `ip netns exec` does with /etc/netns/NAME.
 *   pid     the holder is its PID 1; it reaps orphans and nothing else.
 *   ipc, uts, cgroup   private: System V IPC, the hostname and the cgroup paths are the sandbox's.
 *
 * One binary, two modes:
 *
 *   moat-sandbox create --uid U --gid G --ppid P [--netns-name NAME] [--etc DIR]
 *     This process, the *supervisor*, stays in the host's namespaces. It clones the holder into
 *     new namespaces, writes its uid and gid maps, binds its network namespace at
 *     /run/netns/NAME if asked (root only: `ip netns` and `ip -n NAME` then know it), and lets it
 *     go on. The holder brings lo up, sets up the mounts, drops every capability (and becomes
 *     non-dumpable, so no process of the sandbox can ptrace it), and says it is ready; the
 *     supervisor prints "ready PID\n" (the holder's host PID) on stdout and waits for it. Deaths
 *     cascade: moat's death kills the supervisor (parent-death signal, checked against P), the
 *     supervisor's kills the holder, and the holder's, as PID 1, kills every process of the
 *     sandbox. So a sandbox never outlives moat, even one killed with SIGKILL.
 *
 *   moat-sandbox exec --proc-fd N [--cwd DIR] -- COMMAND [ARGS...]
 *     Fd N is the holder's /proc/PID directory, opened by moat when the sandbox was created (a
 *     PID reused later cannot redirect it). This process joins the holder's namespaces, forks
 *     the command into its PID namespace and waits for it. Signals it receives (those a terminal
 *     or moat sends: HUP, INT, QUIT, TERM, USR1, USR2, ALRM, CONT, TSTP, TTIN, TTOU, WINCH) are
 *     passed on to the command's process group, and it ends as the command ended — the same exit
 *     status, or death by the same signal — so to moat it is the command; killed itself
 *     (SIGKILL), it takes the command with it. SIGSTKFLT asks it to SIGKILL the command's whole
 *     process group (moat's last word to a command hung up on that will not end). The command
 *     runs as root of the user namespace with Docker's default capabilities, all of them
 *     confined to that namespace (no CAP_SYS_ADMIN: the mounts cannot be undone; no
 *     CAP_NET_ADMIN: eth0's configuration is moat's), with no_new_privs, in a session of its own
 *     (no controlling terminal, so TIOCSTI cannot push input into the terminal moat runs in), a
 *     fresh session keyring, and exactly the environment this process was given. Its parent is
 *     outside its PID namespace (getppid() is 0); nothing of the host's is named in its /proc.
 *     It starts in DIR (resolved inside the sandbox), or in / when DIR is not reachable there.
 *
 *   moat-sandbox rootless --ppid P -- COMMAND [ARGS...]
 *     For moat started by an ordinary user: a user namespace of its own in which the user is
 *     root (uid 0 inside = the user outside, setgroups denied), everything else left as it was
 *     (the host's network, so moat's sockets are the user's), then COMMAND (moat again) is
 *     executed in it. There moat creates sandboxes as above, each a user namespace nested in this
 *     one (its root again the user), opens their TAP devices and configures them: it is root
 *     over what it created and nothing else. It dies with P (parent-death signal).
 *
 * Errors before the command runs are reported on stderr as "moat: ..." with exit status 125; a
 * command that cannot be executed exits 127 (not found) or 126 (anything else), as in a shell.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* mount_setattr(2) (Linux 5.12), declared here: glibc's and the kernel's headers for it clash. */
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
struct moat_mount_attr {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define MOAT_MOUNT_ATTR_RDONLY 0x1
#define MOAT_MOUNT_ATTR_NOSUID 0x2
#define MOAT_KEYCTL_JOIN_SESSION_KEYRING 1

#define EXIT_SETUP 125

#define CAP(n) (1ULL << (n))
/* Docker's default set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
 * NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP. Held in the sandbox's user
 * namespace, each reaches only what that namespace owns (its network, its own files). */
static const uint64_t COMMAND_CAPS = CAP(0) | CAP(1) | CAP(3) | CAP(4) | CAP(5) | CAP(6) | CAP(7) |
                                     CAP(8) | CAP(10) | CAP(13) | CAP(18) | CAP(27) | CAP(29) | CAP(31);

static const int FORWARDED[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
                                SIGALRM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGWINCH};

static void fail(int status, int err, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
static void fail(int status, int err, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (err) dprintf(2, "moat: %s: %s\n", msg, strerror(err));
  else dprintf(2, "moat: %s\n", msg);
  _exit(status);
}

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  ssize_t n = write(fd, text, len);
  int e = errno;
  close(fd);
  errno = e;
  return n == (ssize_t)len ? 0 : -1;
}

/* Keep only `keep` in every capability set (bounding included: not even an exec as root gets the
 * rest back) and clear the ambient set. Needs CAP_SETPCAP for the bounding set, so it runs first. */
static void limit_caps(uint64_t keep) {
  for (int c = 0; c < 64; c++) {
    if (keep & CAP(c)) continue;
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) fail(EXIT_SETUP, errno, "cannot drop capability %d", c);
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) fail(EXIT_SETUP, errno, "cannot clear the ambient capabilities");
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2] = {
      {(uint32_t)keep, (uint32_t)keep, 0},
      {(uint32_t)(keep >> 32), (uint32_t)(keep >> 32), 0},
  };
  if (syscall(SYS_capset, &header, data) != 0) fail(EXIT_SETUP, errno, "cannot set capabilities");
}

/* ---- create: the supervisor and the holder ------------------------------------------------- */

struct create_options {
  unsigned long uid, gid;
  pid_t ppid;
  const char *netns_name;
  const char *etc_dir;
};

#define MAX_ETC 32
struct etc_entry {
  int source;                /* O_PATH fd of DIR/NAME, opened before /run is covered */
  char target[PATH_MAX];     /* where it is bound: /etc/NAME, or where that link points */
  int is_dir;
};

/* Where /etc/NAME leads (a link is followed, even a dangling one: /etc/resolv.conf often points
 * into /run, which the sandbox's /run hides, and the mount then makes the file). */
static void etc_target(const char *name, char *out) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "/etc/%s", name);
  if (realpath(path, out)) return;
  char link[PATH_MAX - 8]; /* room for the "/etc/" in front */
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n <= 0) {
    snprintf(out, PATH_MAX, "%s", path);
    return;
  }
  link[n] = 0;
  if (link[0] == '/') snprintf(out, PATH_MAX, "%s", link);
  else snprintf(out, PATH_MAX, "/etc/%s", link);
}

static int read_etc(const char *dir, struct etc_entry *entries) {
  DIR *d = opendir(dir);
  if (!d) fail(EXIT_SETUP, errno, "cannot read %s", dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (n == MAX_ETC) fail(EXIT_SETUP, 0, "%s: more than %d entries", dir, MAX_ETC);
    struct etc_entry *x = &entries[n++];
    x->source = openat(dirfd(d), e->d_name, O_PATH | O_CLOEXEC | O_NOFOLLOW);
    if (x->source < 0) fail(EXIT_SETUP, errno, "cannot open %s/%s", dir, e->d_name);
    struct stat st;
    if (fstat(x->source, &st) != 0) fail(EXIT_SETUP, errno, "cannot stat %s/%s", dir, e->d_name);
    x->is_dir = S_ISDIR(st.st_mode);
    etc_target(e->d_name, x->target);
  }
  closedir(d);
  return n;
}

/* mkdir -p of `path`'s parents, then the file or directory itself (on the sandbox's tmpfs). */
static void make_mount_point(const char *path, int is_dir) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s", path);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) fail(EXIT_SETUP, errno, "cannot make %s", p);
    *s = '/';
  }
  if (is_dir) {
    if (mkdir(p, 0755) != 0 && errno != EEXIST) fail(EXIT_SETUP, errno, "cannot make %s", p);
  } else {
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail(EXIT_SETUP, errno, "cannot make %s", p);
    close(fd);
  }
}

/* Bind what fd refers to onto target (the fd's /proc/self/fd link names it). */
static void bind_fd(int fd, const char *target) {
  char source[64];
  snprintf(source, sizeof source, "/proc/self/fd/%d", fd);
  if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) != 0) fail(EXIT_SETUP, errno, "cannot bind onto %s", target);
}

static void tmpfs(const char *target, const char *options, unsigned long flags) {
  if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | flags, options) != 0) fail(EXIT_SETUP, errno, "cannot mount a tmpfs on %s", target);
}

static void setup_mounts(const char *etc_dir) {
  /* Nothing mounted here propagates back to the host. */
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) fail(EXIT_SETUP, errno, "cannot make / a slave mount");

  /* Everything bound later is opened now, while the host's /dev and /run are still in view. */
  struct etc_entry etc[MAX_ETC];
  int n_etc = etc_dir ? read_etc(etc_dir, etc) : 0;
  static const char *const devices[] = {"null", "zero", "full", "random", "urandom", "tty"};
  enum { N_DEVICES = sizeof devices / sizeof devices[0] };
  int device_fds[N_DEVICES];
  for (int i = 0; i < N_DEVICES; i++) {
    char path[32];
    snprintf(path, sizeof path, "/dev/%s", devices[i]);
    device_fds[i] = open(path, O_PATH | O_CLOEXEC);
    if (device_fds[i] < 0) fail(EXIT_SETUP, errno, "cannot open %s", path);
  }

  /* The host's filesystem, read-only and without set-user-ID, every mount of it (the mounts were
   * copied into this namespace: the host's own stay as they are). */
  struct moat_mount_attr ro = {MOAT_MOUNT_ATTR_RDONLY | MOAT_MOUNT_ATTR_NOSUID, 0, 0, 0};
  if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &ro, sizeof ro) != 0) {
    fail(EXIT_SETUP, errno, "cannot make the host's filesystem read-only in the sandbox (mount_setattr needs Linux 5.12 or later)");
  }

  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) fail(EXIT_SETUP, errno, "cannot mount /proc");
  /* A sysfs of this network namespace; where the kernel refuses one, the host's stays (read-only). */
  (void)mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);

  tmpfs("/dev", "mode=0755,size=64k", MS_NOEXEC);
  for (int i = 0; i < N_DEVICES; i++) {
    char path[32];
    snprintf(path, sizeof path, "/dev/%s", devices[i]);
    make_mount_point(path, 0);
    bind_fd(device_fds[i], path);
    close(device_fds[i]);
  }
  if (mkdir("/dev/pts", 0755) != 0) fail(EXIT_SETUP, errno, "cannot make /dev/pts");
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") != 0) fail(EXIT_SETUP, errno, "cannot mount /dev/pts");
  if (mkdir("/dev/shm", 01777) != 0) fail(EXIT_SETUP, errno, "cannot make /dev/shm");
  tmpfs("/dev/shm", "mode=1777", 0);
  static const char *const links[][2] = {{"pts/ptmx", "/dev/ptmx"}, {"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
                                         {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}};
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
    if (symlink(links[i][0], links[i][1]) != 0) fail(EXIT_SETUP, errno, "cannot make %s", links[i][1]);
  }
  if (mount(NULL, "/dev", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) fail(EXIT_SETUP, errno, "cannot make /dev read-only");

  tmpfs("/tmp", "mode=1777", 0);
  tmpfs("/run", "mode=0755", 0);

  for (int i = 0; i < n_etc; i++) {
    if (!strncmp(etc[i].target, "/run/", 5) || !strncmp(etc[i].target, "/tmp/", 5)) make_mount_point(etc[i].target, etc[i].is_dir);
    bind_fd(etc[i].source, etc[i].target);
    close(etc[i].source);
  }
}

static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) fail(EXIT_SETUP, errno, "cannot open a socket to bring lo up");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) fail(EXIT_SETUP, errno, "cannot read lo's flags");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) fail(EXIT_SETUP, errno, "cannot bring lo up");
  close(s);
}

static void holder_main(const struct create_options *o, int go, int ready) {
  char byte;
  if (read(go, &byte, 1) != 1) _exit(EXIT_SETUP); /* the supervisor died before mapping us */
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) fail(EXIT_SETUP, errno, "cannot become root of the sandbox's user namespace");
  /* After the credential change, which clears it. Then: did the supervisor die meanwhile? */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct pollfd p = {go, POLLIN, 0};
  if (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP)) _exit(EXIT_SETUP);

  loopback_up();
  setup_mounts(o->etc_dir);
  if (chdir("/") != 0) fail(EXIT_SETUP, errno, "cannot enter /");
  limit_caps(0);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(EXIT_SETUP, errno, "cannot set no_new_privs");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) fail(EXIT_SETUP, errno, "cannot make the holder non-dumpable");
  signal(SIGCHLD, SIG_IGN); /* orphans reparented to PID 1 are reaped by the kernel */

  if (write(ready, "r", 1) != 1) _exit(EXIT_SETUP);
  close(ready);
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 0; fd < 3 && null >= 0; fd++) dup2(null, fd);
  for (;;) pause();
}

/* As `ip netns add` does: /run/netns a shared mount point (so the binding is seen from every
 * mount namespace), then the holder's network namespace bound on /run/netns/NAME. */
static void bind_netns(pid_t holder, const char *name, char *bound) {
  const char *dir = "/run/netns";
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) fail(EXIT_SETUP, errno, "cannot make %s", dir);
  if (mount("", dir, "none", MS_SHARED | MS_REC, NULL) != 0) {
    if (errno != EINVAL) fail(EXIT_SETUP, errno, "cannot make %s a shared mount", dir);
    if (mount(dir, dir, "none", MS_BIND | MS_REC, NULL) != 0 || mount("", dir, "none", MS_SHARED | MS_REC, NULL) != 0) {
      fail(EXIT_SETUP, errno, "cannot make %s a shared mount", dir);
    }
  }
  snprintf(bound, PATH_MAX, "%s/%s", dir, name);
  int fd = open(bound, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (fd < 0) fail(EXIT_SETUP, errno, "cannot create %s", bound);
  close(fd);
  char source[64];
  snprintf(source, sizeof source, "/proc/%d/ns/net", (int)holder);
  if (mount(source, bound, "none", MS_BIND, NULL) != 0) {
    int e = errno;
    unlink(bound);
    fail(EXIT_SETUP, e, "cannot bind the network namespace on %s", bound);
  }
}

static int create_main(const struct create_options *o) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(EXIT_SETUP, errno, "cannot set the parent-death signal");
  if (getppid() != o->ppid) _exit(EXIT_SETUP); /* moat is gone already */
  /* None of root's supplementary groups goes along (rootless, setgroups is denied and there are
   * none to drop but the user's own). */
  if (setgroups(0, NULL) != 0 && errno != EPERM) fail(EXIT_SETUP, errno, "cannot drop supplementary groups");
  int go[2], ready[2];
  if (pipe2(go, O_CLOEXEC) != 0 || pipe2(ready, O_CLOEXEC) != 0) fail(EXIT_SETUP, errno, "pipe");
  long holder = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | SIGCHLD,
                        NULL, NULL, NULL, NULL);
  if (holder < 0) {
    int e = errno;
    fail(EXIT_SETUP, e, "cannot create the sandbox's namespaces%s", e == EPERM || e == ENOSPC || e == EUSERS
         ? " (user namespaces are forbidden or exhausted here: see user.max_user_namespaces and kernel.unprivileged_userns_clone)" : "");
  }
  if (holder == 0) {
    close(go[1]);
    close(ready[0]);
    holder_main(o, go[0], ready[1]);
  }
  close(go[0]);
  close(ready[1]);

  char path[64], map[64];
  snprintf(path, sizeof path, "/proc/%ld/setgroups", holder);
  int ok = write_file(path, "deny") == 0;
  snprintf(path, sizeof path, "/proc/%ld/uid_map", holder);
  snprintf(map, sizeof map, "0 %lu 1\n", o->uid);
  ok = ok && write_file(path, map) == 0;
  snprintf(path, sizeof path, "/proc/%ld/gid_map", holder);
  snprintf(map, sizeof map, "0 %lu 1\n", o->gid);
  ok = ok && write_file(path, map) == 0;
  if (!ok) {
    int e = errno;
    kill((pid_t)holder, SIGKILL);
    fail(EXIT_SETUP, e, "cannot map the sandbox's root to uid %lu gid %lu", o->uid, o->gid);
  }
  char bound[PATH_MAX] = "";
  if (o->netns_name) bind_netns((pid_t)holder, o->netns_name, bound);

  if (write(go[1], "g", 1) != 1) fail(EXIT_SETUP, errno, "cannot start the holder");
  /* go[1] stays open: the holder's end reads EOF (POLLHUP) once this process is gone. */
  char byte;
  if (read(ready[0], &byte, 1) != 1) {
    /* The holder reported why on stderr. */
    if (bound[0]) {
      umount2(bound, MNT_DETACH);
      unlink(bound);
    }
    int status;
    waitpid((pid_t)holder, &status, 0);
    _exit(EXIT_SETUP);
  }
  close(ready[0]);
  printf("ready %ld\n", holder);
  fflush(stdout);
  int status;
  while (waitpid((pid_t)holder, &status, 0) < 0 && errno == EINTR) {}
  return 0;
}

/* ---- exec: one command in the sandbox ---------------------------------------------------------- */

static volatile pid_t command_pid;

/* To the command's process group (it is a session leader: its pid), as a terminal signals its
 * foreground group; to the command alone in the instant before its setsid(). */
static void signal_command(int sig) {
  if (command_pid > 0 && kill(-command_pid, sig) != 0) kill(command_pid, sig);
}


/* KILL_GROUP_SIGNAL, never forwarded: moat asks for the command's whole process group to be
 * killed (SIGKILL cannot be caught to be forwarded, and the command's PDEATHSIG reaches it alone,
 * not the processes it started). */
#define KILL_GROUP_SIGNAL SIGSTKFLT
static void kill_group(int sig) {
  (void)sig;
  signal_command(SIGKILL);
}

static int exec_main(int proc_fd, const char *cwd, char **argv) {
  static const struct { const char *name; int type; } NS[] = {
      {"ns/user", CLONE_NEWUSER}, {"ns/mnt", CLONE_NEWNS}, {"ns/net", CLONE_NEWNET}, {"ns/pid", CLONE_NEWPID},
      {"ns/ipc", CLONE_NEWIPC}, {"ns/uts", CLONE_NEWUTS}, {"ns/cgroup", CLONE_NEWCGROUP},
  };
  enum { N_NS = sizeof NS / sizeof NS[0] };
  int fds[N_NS];
  for (int i = 0; i < N_NS; i++) {
    fds[i] = openat(proc_fd, NS[i].name, O_RDONLY | O_CLOEXEC);
    if (fds[i] < 0) fail(EXIT_SETUP, errno, "the sandbox is gone (%s)", NS[i].name);
  }
  close(proc_fd);
  if (setgroups(0, NULL) != 0 && errno != EPERM) fail(EXIT_SETUP, errno, "cannot drop supplementary groups");
  for (int i = 0; i < N_NS; i++) {
    if (setns(fds[i], NS[i].type) != 0) fail(EXIT_SETUP, errno, "cannot join the sandbox's %s namespace", NS[i].name + 3);
    close(fds[i]);
  }
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) fail(EXIT_SETUP, errno, "cannot become root of the sandbox's user namespace");
  /* Not moat's session keyring: a fresh, empty one (where keyctl is filtered, there is none to reach). */
  if (syscall(SYS_keyctl, MOAT_KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS && errno != EPERM) {
    fail(EXIT_SETUP, errno, "cannot give the command a session keyring of its own");
  }

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) != 0) fail(EXIT_SETUP, errno, "pipe");
  pid_t child = fork();
  if (child < 0) fail(EXIT_SETUP, errno, "cannot start the command in the sandbox");
  if (child == 0) {
    close(alive[1]);
    /* The command dies with this process, as it did when it was the process moat started. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct pollfd p = {alive[0], POLLIN, 0};
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP)) _exit(EXIT_SETUP);
    close(alive[0]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (setsid() < 0) fail(EXIT_SETUP, errno, "setsid");
    if (!cwd || chdir(cwd) != 0) {
      if (chdir("/") != 0) fail(EXIT_SETUP, errno, "cannot enter /");
    }
    limit_caps(COMMAND_CAPS);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(EXIT_SETUP, errno, "cannot set no_new_privs");
    execvp(argv[0], argv);
    int e = errno;
    fail(e == ENOENT ? 127 : 126, e, "%s", argv[0]);
  }
  close(alive[0]);
  command_pid = child;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = signal_command;
  sa.sa_flags = SA_RESTART;
  sigfillset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++) sigaction(FORWARDED[i], &sa, NULL);
  sa.sa_handler = kill_group;
  sigaction(KILL_GROUP_SIGNAL, &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);
  limit_caps(0); /* this process only waits from here on */

  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) fail(EXIT_SETUP, errno, "waitpid");
  }
  if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
  /* Die of the same signal, without a core file of this process. */
  int sig = WTERMSIG(status);
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  sigprocmask(SIG_UNBLOCK, &one, NULL);
  kill(getpid(), sig);
  _exit(128 + sig);
}

/* ---- rootless: moat itself in a user namespace of its own -------------------------------------- */

static int rootless_main(pid_t ppid, char **argv) {
  uid_t uid = getuid();
  gid_t gid = getgid();
  if (unshare(CLONE_NEWUSER) != 0) {
    int e = errno;
    fail(EXIT_SETUP, e, "cannot create a user namespace as uid %u%s", (unsigned)uid, e == EPERM || e == ENOSPC || e == EUSERS
         ? " (unprivileged user namespaces are forbidden or exhausted here: see user.max_user_namespaces, kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)" : "");
  }
  char map[64];
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
  if (write_file("/proc/self/setgroups", "deny") != 0 || write_file("/proc/self/uid_map", map) != 0) fail(EXIT_SETUP, errno, "cannot map uid %u to root of moat's user namespace", (unsigned)uid);
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
  if (write_file("/proc/self/gid_map", map) != 0) fail(EXIT_SETUP, errno, "cannot map gid %u to root of moat's user namespace", (unsigned)gid);
  /* After the credential change, which clears it; exec keeps it. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(EXIT_SETUP, errno, "cannot set the parent-death signal");
  if (getppid() != ppid) _exit(EXIT_SETUP);
  execvp(argv[0], argv);
  int e = errno;
  fail(e == ENOENT ? 127 : 126, e, "%s", argv[0]);
}

/* ---- arguments --------------------------------------------------------------------------------- */

static unsigned long number(const char *flag, const char *text, unsigned long max) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(text, &end, 10);
  if (errno || !*text || *end || v > max) fail(EXIT_SETUP, 0, "moat-sandbox: %s \"%s\" is not a number up to %lu", flag, text, max);
  return v;
}

static void usage(void) __attribute__((noreturn));
static void usage(void) {
  fail(EXIT_SETUP, 0, "usage: moat-sandbox create --uid U --gid G --ppid P [--netns-name NAME] [--etc DIR]\n"
                      "       moat-sandbox exec --proc-fd N [--cwd DIR] -- COMMAND [ARGS...]\n"
                      "       moat-sandbox rootless --ppid P -- COMMAND [ARGS...]");
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  const char *mode = argv[1];
  struct create_options co = {(unsigned long)-1, (unsigned long)-1, 0, NULL, NULL};
  int proc_fd = -1;
  const char *cwd = NULL;
  int i = 2;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(a, "--uid")) co.uid = number(a, v, 4294967294UL);
    else if (!strcmp(a, "--gid")) co.gid = number(a, v, 4294967294UL);
    else if (!strcmp(a, "--ppid")) co.ppid = (pid_t)number(a, v, INT_MAX);
    else if (!strcmp(a, "--netns-name")) co.netns_name = v;
    else if (!strcmp(a, "--etc")) co.etc_dir = v;
    else if (!strcmp(a, "--proc-fd")) proc_fd = (int)number(a, v, INT_MAX);
    else if (!strcmp(a, "--cwd")) cwd = v;
    else usage();
  }
  if (!strcmp(mode, "create")) {
    if (co.uid == (unsigned long)-1 || co.gid == (unsigned long)-1 || co.ppid <= 0 || i != argc) usage();
    return create_main(&co);
  }
  if (!strcmp(mode, "rootless")) {
    if (co.ppid <= 0 || i >= argc) usage();
    return rootless_main(co.ppid, argv + i);
  }
  if (!strcmp(mode, "exec")) {
    if (proc_fd < 0 || i >= argc) usage();
    return exec_main(proc_fd, cwd, argv + i);
  }
  usage();
}
