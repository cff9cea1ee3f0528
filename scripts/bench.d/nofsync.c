/* A diagnostic for scripts/bench, never for real use: LD_PRELOADed into
 * airlock, it turns fsync, fdatasync, syncfs and sync_file_range into
 * no-ops, so that the time an export spends making its files durable can
 * be told from the rest. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>

int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
int syncfs(int fd) { (void)fd; return 0; }
int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
  (void)fd; (void)offset; (void)nbytes; (void)flags;
  return 0;
}
