package segmenter

import (
	"net/url"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// NewRedisClient builds the Redis client that a Config.RedisURL names:
//
//	redis://[user:password@]host:port/db             a single node
//	rediss://...                                     the same over TLS
//	redis://host:port?cluster=true&addr=host2:port2  a Redis Cluster: the
//	                                                 seeds are the host and
//	                                                 every addr
//	redis://host:port/db?master_name=M&addr=...      Sentinel: the sentinels
//	                                                 of the primary named M
//
// Other query parameters set go-redis options by their snake-case names
// (dial_timeout=3s, pool_size=20, ...): see redis.ParseURL,
// redis.ParseClusterURL and redis.ParseFailoverURL. The caller owns the
// client and closes it.
func NewRedisClient(redisURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(redisURL)
	if err != nil {
		return nil, invalid("RedisURL: %v", err)
	}
	q := u.Query()
	switch {
	case q.Has("cluster"):
		on, err := strconv.ParseBool(q.Get("cluster"))
		if err != nil {
			return nil, invalid("RedisURL: cluster=%q is not a boolean", q.Get("cluster"))
		}
		q.Del("cluster")
		u.RawQuery = q.Encode()
		if !on {
			break
		}
		if u.Path != "" && u.Path != "/" && u.Path != "/0" {
			return nil, invalid("RedisURL: a Redis Cluster has only database 0, not %q", u.Path)
		}
		u.Path = ""
		opt, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, invalid("RedisURL: %v", err)
		}
		return redis.NewClusterClient(opt), nil
	case q.Has("master_name"):
		opt, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, invalid("RedisURL: %v", err)
		}
		return redis.NewFailoverClient(opt), nil
	}
	opt, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, invalid("RedisURL: %v", err)
	}
	return redis.NewClient(opt), nil
}
