/* agent.c — moat's exec agent inside a VM sandbox: it is the guest's init, and it runs the host's
 * commands and relays their I/O.
 *
 * Theory of operation
 * -------------------
 * The kernel runs it as /init (PID 1) from the initramfs. As PID 1 it first sets the guest up:
 * mounts proc, sysfs, devtmpfs, devpts and /dev/shm; loads the modules listed in
 * /etc/moat/modules, in order (the image builder wrote them dependencies first, uncompressed);
 * brings lo up; and if there is an eth0, brings it up and runs busybox udhcpc once with
 * /etc/moat/udhcpc.sh (address, router, MTU, DNS; no lease is not fatal). This is done here
 * rather than by a shell script because every process a script starts costs ~15 ms under TCG:
 * the setup takes ~0.1 s instead of ~0.5 s. PID 1 reaps every orphan and never returns: when
 * the host is done, the agent syncs and powers the VM off.
 *
 * It talks to the host over the virtio-serial port named "moat.exec" (QEMU:
 * `-device virtserialport,name=moat.exec`), found by name in /sys/class/virtio-ports and opened as
 * /dev/vportNpM (devtmpfs makes the node; if it is missing the agent makes it from the sysfs
 * `dev` numbers).
 *
 * Framing, both ways: [type u8][len u32 big-endian][len bytes of payload].
 *
 *   guest → host
 *     0x01 READY      once, when the agent is up; payload: the guest's uptime in ms, ASCII digits
 *     0x02 STDOUT     bytes the command wrote to its stdout
 *     0x03 STDERR     bytes the command wrote to its stderr
 *     0x04 EXIT       u32 BE: the exit status (0..255), or 128+N when killed by signal N;
 *                     sent after the command exited and both its pipes reached EOF (or after
 *                     EXIT_GRACE_MS if a process it left behind still holds them open)
 *   host → guest
 *     0x10 EXEC       u32 BE argc, u32 BE envc, then argc NUL-terminated argv strings, envc
 *                     NUL-terminated "NAME=value" strings, then one NUL-terminated cwd ("" = "/").
 *                     The environment is exactly the one given (PATH included); argv[0] is looked
 *                     up in that PATH. One command at a time; after EXIT another EXEC may follow.
 *     0x11 STDIN      bytes for the command's stdin
 *     0x12 STDIN_EOF  close the command's stdin (after what was queued is written)
 *     0x13 SIGNAL     u32 BE signal number, sent to the command's process group (the command is
 *                     a session leader: it and its children)
 *     0x14 POWEROFF   sync and power the VM off (so does the host closing its end of the port)
 *
 * A command that cannot be started reports on its stderr and exits 127 (not found) or 126 (any
 * other exec failure), as a shell would. One poll loop multiplexes the port, the command's three
 * pipes and a signalfd for SIGCHLD; only writes to the port block (the host always reads). Stdin
 * the command does not read is queued up to STDIN_HIGH_WATER, past which the agent stops reading
 * the port until the command catches up (the host's socket buffers the rest).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  MSG_READY = 0x01, MSG_STDOUT = 0x02, MSG_STDERR = 0x03, MSG_EXIT = 0x04,
  MSG_EXEC = 0x10, MSG_STDIN = 0x11, MSG_STDIN_EOF = 0x12, MSG_SIGNAL = 0x13, MSG_POWEROFF = 0x14,
};

#define PORT_NAME "moat.exec"
#define MAX_FRAME (16u << 20)       /* an EXEC with a large environment still fits */
#define STDIN_HIGH_WATER (1u << 20)
#define EXIT_GRACE_MS 200
#define CHUNK 65536

static int port = -1;

static void logf_(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("moat-agent: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void power_off(void) {
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause(); /* PID 1 must not exit */
}

static void die(const char *what) {
  logf_("%s: %s", what, strerror(errno));
  power_off();
}

static uint64_t now_ms(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { struct pollfd w = { fd, POLLOUT, 0 }; poll(&w, 1, -1); continue; }
      die("write to the host port");
    }
    p += n;
    len -= (size_t)n;
  }
}

static void send_frame(uint8_t type, const void *payload, uint32_t len) {
  uint8_t head[5] = { type, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len };
  write_all(port, head, sizeof head);
  if (len) write_all(port, payload, len);
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- PID 1: setting the guest up ------------------------------------------------------------ */

static void mount_or_log(const char *source, const char *target, const char *type, const char *data) {
  mkdir(target, 0755);
  if (mount(source, target, type, MS_NOSUID, data) != 0) logf_("mount %s on %s: %s", type, target, strerror(errno));
}

static void load_modules(const char *list) {
  FILE *f = fopen(list, "re");
  if (!f) return;
  char name[256];
  while (fgets(name, sizeof name, f)) {
    name[strcspn(name, "\n")] = 0;
    if (!name[0]) continue;
    char path[300];
    snprintf(path, sizeof path, "/lib/modules/%s.ko", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0) logf_("loading %s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
  }
  fclose(f);
}

/* Sets IFF_UP on an interface; returns 0 if it exists and is up. */
static int link_up(const char *ifname) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  int rc = s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0 ? -1 : 0;
  if (rc == 0) {
    ifr.ifr_flags |= IFF_UP;
    rc = ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  if (s >= 0) close(s);
  return rc;
}

/* Runs argv (PATH lookup) and waits for it; returns its exit status, or -1. */
static int run_and_wait(char *const argv[]) {
  pid_t pid = fork();
  if (pid == 0) {
    execvp(argv[0], argv);
    _exit(127);
  }
  int st;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void setup_guest(void) {
  setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  mount_or_log("proc", "/proc", "proc", NULL);
  mount_or_log("sysfs", "/sys", "sysfs", NULL);
  mount_or_log("devtmpfs", "/dev", "devtmpfs", NULL);
  mount_or_log("devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666");
  mount_or_log("tmpfs", "/dev/shm", "tmpfs", "mode=1777");
  sethostname("moat", 4);
  load_modules("/etc/moat/modules");
  if (link_up("lo") != 0) logf_("lo: %s", strerror(errno));
  if (link_up("eth0") == 0) {
    char *const dhcp[] = { "udhcpc", "-i", "eth0", "-q", "-n", "-t", "5", "-T", "1", "-O", "mtu", "-s", "/etc/moat/udhcpc.sh", NULL };
    if (run_and_wait(dhcp) != 0) logf_("no DHCP lease on eth0: the command runs without a network");
  }
}

/* ---- finding the port ---------------------------------------------------------------------- */

static int read_small_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) n--;
  buf[n] = 0;
  return 0;
}

/* Returns an open fd for the port named PORT_NAME, or -1 if it does not exist (yet). */
static int open_named_port(void) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int fd = -1;
  while (fd < 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[300], buf[64];
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    if (read_small_file(path, buf, sizeof buf) < 0 || strcmp(buf, PORT_NAME) != 0) continue;
    char dev[300];
    snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
    if (access(dev, F_OK) != 0) { /* no devtmpfs node: make one from the sysfs numbers */
      unsigned maj, min;
      snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/dev", e->d_name);
      if (read_small_file(path, buf, sizeof buf) == 0 && sscanf(buf, "%u:%u", &maj, &min) == 2)
        mknod(dev, S_IFCHR | 0600, makedev(maj, min));
    }
    fd = open(dev, O_RDWR | O_CLOEXEC);
  }
  closedir(d);
  return fd;
}

static void open_port(void) {
  for (int tries = 0; tries < 1000; tries++) { /* up to 10 s for the driver to bind */
    port = open_named_port();
    if (port >= 0) break;
    usleep(10000);
  }
  if (port < 0) { errno = ENOENT; die("virtio-serial port " PORT_NAME); }
  /* Until the host has its end open, poll() says POLLHUP and what we write would be dropped. */
  for (;;) {
    struct pollfd p = { port, POLLOUT, 0 };
    if (poll(&p, 1, -1) > 0 && !(p.revents & POLLHUP)) break;
    usleep(5000);
  }
}

/* ---- the host's messages ------------------------------------------------------------------- */

static uint8_t *inbuf;
static size_t in_len, in_cap;

/* A parsed EXEC: pointers into a copy of the payload. */
struct exec_req { char **argv, **envp; const char *cwd; uint8_t *storage; };

static int parse_exec(const uint8_t *p, uint32_t len, struct exec_req *req) {
  if (len < 8) return -1;
  uint32_t argc = get_u32(p), envc = get_u32(p + 4);
  if (argc == 0 || argc > len || envc > len) return -1;
  req->storage = malloc(len - 8 + 1);
  req->argv = calloc(argc + 1, sizeof(char *));
  req->envp = calloc(envc + 1, sizeof(char *));
  if (!req->storage || !req->argv || !req->envp) die("malloc");
  memcpy(req->storage, p + 8, len - 8);
  req->storage[len - 8] = 0;
  char *s = (char *)req->storage, *end = s + (len - 8);
  for (uint32_t i = 0; i < argc + envc + 1; i++) {
    char *nul = memchr(s, 0, (size_t)(end - s));
    if (!nul) return -1;
    if (i < argc) req->argv[i] = s;
    else if (i < argc + envc) req->envp[i - argc] = s;
    else req->cwd = s;
    s = nul + 1;
  }
  return 0;
}

static void free_exec(struct exec_req *req) {
  free(req->storage);
  free(req->argv);
  free(req->envp);
}

/* Reads what the port has into inbuf. Returns 0 when the host closed its end. */
static int fill_inbuf(void) {
  if (in_cap - in_len < CHUNK) {
    in_cap = in_cap ? in_cap * 2 : 4 * CHUNK;
    inbuf = realloc(inbuf, in_cap);
    if (!inbuf) die("malloc");
  }
  ssize_t n = read(port, inbuf + in_len, in_cap - in_len);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
  in_len += (size_t)n;
  return n > 0;
}

/* The next complete frame in inbuf, or 0 if there is none yet. */
static int next_frame(uint8_t *type, const uint8_t **payload, uint32_t *len) {
  if (in_len < 5) return 0;
  uint32_t l = get_u32(inbuf + 1);
  if (l > MAX_FRAME) { logf_("frame of %u bytes from the host: protocol error", l); power_off(); }
  if (in_len < 5 + (size_t)l) return 0;
  *type = inbuf[0];
  *payload = inbuf + 5;
  *len = l;
  return 1;
}

static void consume_frame(uint32_t len) {
  memmove(inbuf, inbuf + 5 + len, in_len - 5 - len);
  in_len -= 5 + len;
}

/* ---- running one command ------------------------------------------------------------------- */

struct command {
  pid_t pid;
  int in, out, err;            /* our ends of its pipes, -1 once closed */
  uint8_t *pending;            /* stdin queued for the command */
  size_t pending_len, pending_cap;
  int stdin_eof;               /* the host sent STDIN_EOF: close `in` once pending is written */
  int exited, status;
  uint64_t exited_at;
};

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static int set_nonblock(int fd) {
  return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void spawn(struct command *c, struct exec_req *req, const sigset_t *oldmask) {
  int pin[2], pout[2], perr[2];
  if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    dup2(pin[0], 0);
    dup2(pout[1], 1);
    dup2(perr[1], 2);
    const char *cwd = req->cwd && req->cwd[0] ? req->cwd : "/";
    if (chdir(cwd) != 0) {
      dprintf(2, "moat: cannot change directory to %s: %s\n", cwd, strerror(errno));
      _exit(126);
    }
    environ = req->envp; /* execvp looks argv[0] up in the command's own PATH */
    execvp(req->argv[0], req->argv);
    int e = errno;
    dprintf(2, "moat: %s: %s\n", req->argv[0], strerror(e));
    _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
  }
  close(pin[0]);
  close(pout[1]);
  close(perr[1]);
  memset(c, 0, sizeof *c);
  c->pid = pid;
  c->in = pin[1];
  c->out = pout[0];
  c->err = perr[0];
  set_nonblock(c->in);
  set_nonblock(c->out);
  set_nonblock(c->err);
}

static void queue_stdin(struct command *c, const uint8_t *p, uint32_t len) {
  if (c->in < 0) return; /* the command closed its stdin: what it would not read is dropped */
  if (c->pending_cap - c->pending_len < len) {
    while (c->pending_cap - c->pending_len < len) c->pending_cap = c->pending_cap ? c->pending_cap * 2 : CHUNK;
    c->pending = realloc(c->pending, c->pending_cap);
    if (!c->pending) die("malloc");
  }
  memcpy(c->pending + c->pending_len, p, len);
  c->pending_len += len;
}

static void flush_stdin(struct command *c) {
  while (c->in >= 0 && c->pending_len > 0) {
    ssize_t n = write(c->in, c->pending, c->pending_len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      close_fd(&c->in); /* EPIPE: the reader is gone */
      c->pending_len = 0;
      return;
    }
    memmove(c->pending, c->pending + n, c->pending_len - (size_t)n);
    c->pending_len -= (size_t)n;
  }
  if (c->stdin_eof && c->pending_len == 0) close_fd(&c->in);
}

/* Relays up to 4 chunks of one output pipe (then the loop serves the host and the other pipes:
 * a command that writes without pause must not starve its SIGNAL); closes it at EOF. */
static void relay_output(int *fd, uint8_t type) {
  static uint8_t buf[CHUNK];
  for (int chunks = 0; chunks < 4;) {
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) { send_frame(type, buf, (uint32_t)n); chunks++; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    close_fd(fd);
    return;
  }
}

/* Reaps every child that exited (orphans too: we are PID 1); notes the command's status. */
static void reap(struct command *c) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    if (c && pid == c->pid && !c->exited) {
      c->exited = 1;
      c->status = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
      c->exited_at = now_ms(CLOCK_MONOTONIC);
    }
  }
}

static void drain_signalfd(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof si) == sizeof si) {}
}

/* Handles one host frame. Returns 1 on EXEC (with *req filled), 0 otherwise. */
static int handle_frame(uint8_t type, const uint8_t *p, uint32_t len, struct command *c, struct exec_req *req) {
  switch (type) {
  case MSG_EXEC:
    if (c) { logf_("EXEC while a command runs: ignored"); return 0; }
    if (parse_exec(p, len, req) != 0) { logf_("malformed EXEC: protocol error"); power_off(); }
    return 1;
  case MSG_STDIN:
    if (c) queue_stdin(c, p, len);
    return 0;
  case MSG_STDIN_EOF:
    if (c) c->stdin_eof = 1;
    return 0;
  case MSG_SIGNAL:
    if (c && len >= 4 && !c->exited) {
      int sig = (int)get_u32(p);
      if (kill(-c->pid, sig) != 0) kill(c->pid, sig);
    }
    return 0;
  case MSG_POWEROFF:
    power_off();
    return 0;
  default:
    logf_("unknown message type 0x%02x: ignored", type);
    return 0;
  }
}

/* Runs the command until it exited and its output is relayed, then sends EXIT. */
static void run_command(struct exec_req *req, int sfd, const sigset_t *oldmask) {
  struct command c;
  spawn(&c, req, oldmask);
  int port_open = 1;
  for (;;) {
    /* Host frames already buffered (they may have come with the EXEC). */
    uint8_t type; const uint8_t *p; uint32_t len;
    struct exec_req ignored;
    while (next_frame(&type, &p, &len)) {
      handle_frame(type, p, len, &c, &ignored);
      consume_frame(len);
    }
    flush_stdin(&c);
    reap(&c);
    if (c.exited && ((c.out < 0 && c.err < 0) || now_ms(CLOCK_MONOTONIC) - c.exited_at >= EXIT_GRACE_MS)) break;

    struct pollfd fds[5];
    int n = 0, i_port = -1, i_in = -1, i_out = -1, i_err = -1;
    fds[n++] = (struct pollfd){ sfd, POLLIN, 0 };
    if (port_open && c.pending_len < STDIN_HIGH_WATER) { i_port = n; fds[n++] = (struct pollfd){ port, POLLIN, 0 }; }
    if (c.in >= 0 && c.pending_len > 0) { i_in = n; fds[n++] = (struct pollfd){ c.in, POLLOUT, 0 }; }
    if (c.out >= 0) { i_out = n; fds[n++] = (struct pollfd){ c.out, POLLIN, 0 }; }
    if (c.err >= 0) { i_err = n; fds[n++] = (struct pollfd){ c.err, POLLIN, 0 }; }
    int timeout = -1;
    if (c.exited) {
      uint64_t waited = now_ms(CLOCK_MONOTONIC) - c.exited_at;
      timeout = waited >= EXIT_GRACE_MS ? 0 : (int)(EXIT_GRACE_MS - waited);
    }
    if (poll(fds, (nfds_t)n, timeout) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[0].revents) drain_signalfd(sfd);
    if (i_port >= 0 && fds[i_port].revents) {
      /* The host hung up: stop reading, let the command finish; we power off after EXIT. */
      if ((fds[i_port].revents & POLLHUP) || !fill_inbuf()) port_open = 0;
    }
    if (i_in >= 0 && fds[i_in].revents & (POLLOUT | POLLERR | POLLHUP)) flush_stdin(&c);
    if (i_out >= 0 && fds[i_out].revents) relay_output(&c.out, MSG_STDOUT);
    if (i_err >= 0 && fds[i_err].revents) relay_output(&c.err, MSG_STDERR);
  }
  close_fd(&c.in);
  close_fd(&c.out);
  close_fd(&c.err);
  free(c.pending);
  uint8_t st[4] = { (uint8_t)(c.status >> 24), (uint8_t)(c.status >> 16), (uint8_t)(c.status >> 8), (uint8_t)c.status };
  send_frame(MSG_EXIT, st, 4);
  if (!port_open) power_off();
}

int main(void) {
  if (getpid() == 1) setup_guest();
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask, oldmask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, &oldmask);
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) die("signalfd");

  open_port();
  char ready[32];
  int rl = snprintf(ready, sizeof ready, "%llu", (unsigned long long)now_ms(CLOCK_BOOTTIME));
  send_frame(MSG_READY, ready, (uint32_t)rl);

  /* Idle: wait for EXEC (or POWEROFF / the host closing its end), reaping orphans meanwhile. */
  for (;;) {
    uint8_t type; const uint8_t *p; uint32_t len;
    struct exec_req req;
    int exec = 0;
    while (!exec && next_frame(&type, &p, &len)) {
      exec = handle_frame(type, p, len, NULL, &req);
      consume_frame(len);
    }
    if (exec) {
      run_command(&req, sfd, &oldmask);
      free_exec(&req);
      continue;
    }
    struct pollfd fds[2] = { { sfd, POLLIN, 0 }, { port, POLLIN, 0 } };
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[0].revents) { drain_signalfd(sfd); reap(NULL); }
    if (fds[1].revents && ((fds[1].revents & POLLHUP) || !fill_inbuf())) power_off();
  }
}
