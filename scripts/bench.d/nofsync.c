/* A diagnostic for scripts/bench, never for real use: LD_PRELOADed into
 * airlock, it turns fsync and fdatasync into no-ops, so that the time an
 * export spends making its files durable can be told from the rest. */
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
