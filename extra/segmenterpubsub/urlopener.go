package segmenterpubsub

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"gocloud.dev/pubsub"

	"github.com/segmenter/segmenter"
)

// Scheme is the URL scheme this package registers its URLOpener under on
// pubsub.DefaultURLMux.
const Scheme = "segmenter"

func init() {
	o := new(URLOpener)
	pubsub.DefaultURLMux().RegisterTopic(Scheme, o)
	pubsub.DefaultURLMux().RegisterSubscription(Scheme, o)
}

// URLOpener opens segmenter URLs (see the package documentation):
// "segmenter://NAMESPACE/STREAM" for topics, and
// "segmenter://NAMESPACE/STREAM?group=GROUP" or
// "segmenter://NAMESPACE/PATTERN?group=GROUP" for subscriptions.
//
// The zero value, registered on pubsub.DefaultURLMux, builds a Segmenter for
// each topic and subscription, on the Redis of the redis_url parameter or of
// the REDIS_URL environment variable, and closes it at Shutdown.
type URLOpener struct {
	// Segmenter, when set, serves every URL of its namespace (a URL of
	// another namespace, or with redis_url, is an error) and stays the
	// caller's: Shutdown does not close it.
	Segmenter *segmenter.Segmenter

	// Config is the base of the Segmenters the opener builds when Segmenter
	// is nil (timings, Logger, OnError, a Client): the URL sets Namespace,
	// and redis_url sets RedisURL (and drops Client).
	Config segmenter.Config

	// TopicOptions and SubscriptionOptions are the defaults of the URLs'
	// topics and subscriptions; query parameters override them.
	TopicOptions        TopicOptions
	SubscriptionOptions SubscriptionOptions
}

var (
	topicParams        = []string{"redis_url", "key_name", "partitions", "max_len"}
	subscriptionParams = []string{"redis_url", "group", "consumer", "batch_size", "max_processing_time", "start", "max_deliveries", "poison"}
)

// target is the namespace and the stream (or pattern) of a URL.
func target(u *url.URL, kind string, allowed []string) (ns, name string, q url.Values, err error) {
	q = u.Query()
	var errs []error
	for param := range q {
		if !slices.Contains(allowed, param) {
			errs = append(errs, fmt.Errorf("unknown query parameter %q (a %s takes %s)", param, kind, strings.Join(allowed, ", ")))
		} else if len(q[param]) > 1 {
			errs = append(errs, fmt.Errorf("query parameter %q given %d times", param, len(q[param])))
		}
	}
	ns, name = u.Host, strings.TrimPrefix(u.Path, "/")
	if ns == "" {
		errs = append(errs, errors.New("no namespace: want segmenter://NAMESPACE/STREAM"))
	}
	if name == "" {
		errs = append(errs, errors.New("no stream: want segmenter://NAMESPACE/STREAM"))
	}
	if u.User != nil || u.Fragment != "" || u.Port() != "" {
		errs = append(errs, errors.New("a segmenter URL has no user, port or fragment: put Redis in redis_url"))
	}
	if err := errors.Join(errs...); err != nil {
		return "", "", nil, fmt.Errorf("segmenterpubsub: open %s %s: %w: %w", kind, redact(u), segmenter.ErrInvalidArgument, err)
	}
	return ns, name, q, nil
}

// redact returns u without the password of its redis_url.
func redact(u *url.URL) string {
	q := u.Query()
	if r := q.Get("redis_url"); r != "" {
		if ru, err := url.Parse(r); err == nil && ru.User != nil {
			q.Set("redis_url", ru.Redacted())
			c := *u
			c.RawQuery = q.Encode()
			return c.String()
		}
	}
	return u.String()
}

// segmenter returns the Segmenter for namespace ns, and whether the caller
// owns it (must close it).
func (o *URLOpener) segmenter(ns, redisURL string) (*segmenter.Segmenter, bool, error) {
	if o.Segmenter != nil {
		switch {
		case ns != o.Segmenter.Namespace():
			return nil, false, fmt.Errorf("%w: namespace %q: the URLOpener's Segmenter serves namespace %q", segmenter.ErrInvalidArgument, ns, o.Segmenter.Namespace())
		case redisURL != "":
			return nil, false, fmt.Errorf("%w: redis_url with a URLOpener that has a Segmenter", segmenter.ErrInvalidArgument)
		}
		return o.Segmenter, false, nil
	}
	cfg := o.Config
	cfg.Namespace = ns
	if redisURL != "" {
		cfg.RedisURL, cfg.Client = redisURL, nil
	}
	seg, err := segmenter.NewSegmenter(&cfg)
	if err != nil {
		return nil, false, err
	}
	return seg, true, nil
}

// OpenTopicURL opens the topic of a URL "segmenter://NAMESPACE/STREAM".
func (o *URLOpener) OpenTopicURL(ctx context.Context, u *url.URL) (*pubsub.Topic, error) {
	ns, stream, q, err := target(u, "topic", topicParams)
	if err != nil {
		return nil, err
	}
	opts := o.TopicOptions
	var errs []error
	if v := q.Get("key_name"); v != "" {
		opts.KeyName = v
	}
	if v := q.Get("partitions"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("partitions=%q: want a number of 1 or more", v))
		}
		opts.Partitions = n
	}
	if v := q.Get("max_len"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("max_len=%q: want a number of 0 or more", v))
		}
		opts.MaxLenPerPartition = n
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open topic %s: %w: %w", redact(u), segmenter.ErrInvalidArgument, err)
	}
	seg, own, err := o.segmenter(ns, q.Get("redis_url"))
	if err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open topic %s: %w", redact(u), err)
	}
	dt, err := openTopic(ctx, seg, own, stream, &opts)
	if err != nil {
		if own {
			_ = seg.Close(ctx)
		}
		return nil, err
	}
	return pubsub.NewTopic(dt, &dt.batcher), nil
}

// OpenSubscriptionURL opens the subscription of a URL
// "segmenter://NAMESPACE/STREAM?group=GROUP", or of every stream matching a
// pattern with "segmenter://NAMESPACE/PATTERN?group=GROUP".
func (o *URLOpener) OpenSubscriptionURL(ctx context.Context, u *url.URL) (*pubsub.Subscription, error) {
	ns, name, q, err := target(u, "subscription", subscriptionParams)
	if err != nil {
		return nil, err
	}
	opts := o.SubscriptionOptions
	opts.ConsumerOptions = slices.Clone(opts.ConsumerOptions)
	var errs []error
	group := q.Get("group")
	if group == "" {
		errs = append(errs, errors.New("no group: a subscription is a consumer of a group, add ?group=GROUP"))
	}
	if v := q.Get("consumer"); v != "" {
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithConsumerName(v))
	}
	if v := q.Get("batch_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("batch_size=%q: want a number of 1 or more", v))
		}
		opts.BatchSize = n
	}
	if v := q.Get("max_processing_time"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("max_processing_time=%q: want a duration such as 30s", v))
		}
		opts.MaxProcessingTime = d
	}
	switch v := q.Get("start"); v {
	case "":
	case "earliest":
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithStartPosition(segmenter.StartEarliest))
	case "latest":
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithStartPosition(segmenter.StartLatest))
	default:
		errs = append(errs, fmt.Errorf("start=%q: want earliest or latest", v))
	}
	if v := q.Get("max_deliveries"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("max_deliveries=%q: want a number of 0 or more", v))
		}
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithMaxDeliveries(n))
	}
	switch v := q.Get("poison"); v {
	case "":
	case "dead_letter":
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithPoisonPolicy(segmenter.PoisonDeadLetter))
	case "deliver":
		opts.ConsumerOptions = append(opts.ConsumerOptions, segmenter.WithPoisonPolicy(segmenter.PoisonDeliver))
	default:
		errs = append(errs, fmt.Errorf("poison=%q: want dead_letter or deliver", v))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open subscription %s: %w: %w", redact(u), segmenter.ErrInvalidArgument, err)
	}
	seg, own, err := o.segmenter(ns, q.Get("redis_url"))
	if err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open subscription %s: %w", redact(u), err)
	}
	stream, pattern := name, ""
	if strings.ContainsAny(name, `*?[]\`) {
		stream, pattern = "", name
	}
	ds, err := openSubscription(ctx, seg, own, stream, pattern, group, &opts)
	if err != nil {
		if own {
			_ = seg.Close(ctx)
		}
		return nil, err
	}
	return pubsub.NewSubscription(ds, &ds.o.ReceiveBatcherOptions, &ds.o.AckBatcherOptions), nil
}
