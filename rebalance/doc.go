// Package rebalance holds the coordination of a consumer group in Redis: the
// leases that fence every read, claim and ack of a partition, and the Lua
// scripts that implement them atomically inside Redis.
//
// Every function here takes a redis.Cmdable and runs its scripts in one
// pipelined round trip (EVALSHA, falling back to EVAL when the server has not
// cached a script). The key layout is in internal/keyspace.
package rebalance
