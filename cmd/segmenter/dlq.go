package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/segmenter/segmenter"
)

// dlqActions are the actions of dlq.
var dlqActions = []string{"list", "redrive", "delete"}

// dlqPage is the page size of the listings of dlq.
const dlqPage = 500

// deadLettersJSON is the output of dlq list -json.
type deadLettersJSON struct {
	Namespace   string           `json:"namespace"`
	Stream      string           `json:"stream"`
	Group       string           `json:"group"`
	DeadLetters []deadLetterJSON `json:"dead_letters"`
	More        bool             `json:"more"` // more letters than -limit
}

type deadLetterJSON struct {
	Partition  int               `json:"partition"`
	ID         string            `json:"id"` // with partition, what redrive and delete take (-id partition/id)
	OriginalID string            `json:"original_id"`
	Key        string            `json:"key"`
	Data       *string           `json:"data"` // null when not valid UTF-8: see data_base64
	DataBase64 []byte            `json:"data_base64,omitempty"`
	Metadata   map[string]string `json:"metadata"`
	Reason     string            `json:"reason"`
	Deliveries int               `json:"deliveries"`
	At         time.Time         `json:"at"`
	Poison     string            `json:"poison,omitempty"`
}

// dlqCountJSON is the output of dlq redrive -json and dlq delete -json.
type dlqCountJSON struct {
	Namespace string `json:"namespace"`
	Stream    string `json:"stream"`
	Group     string `json:"group"`
	Redriven  *int   `json:"redriven,omitempty"`
	Deleted   *int   `json:"deleted,omitempty"`
}

// letterIDs collects -id PARTITION/ID flags (repeatable, or comma
// separated).
type letterIDs []segmenter.DeadLetter

func (l *letterIDs) String() string { return "" }

func (l *letterIDs) Set(v string) error {
	for _, one := range strings.Split(v, ",") {
		p, id, ok := strings.Cut(strings.TrimSpace(one), "/")
		n, err := strconv.Atoi(p)
		if !ok || err != nil || n < 0 || !validID(id) {
			return fmt.Errorf("want PARTITION/ID as dlq list prints them (3/1712345678901-0), got %q", one)
		}
		*l = append(*l, segmenter.DeadLetter{Partition: n, ID: id})
	}
	return nil
}

func validID(id string) bool {
	a, b, ok := strings.Cut(id, "-")
	_, err1 := strconv.ParseUint(a, 10, 64)
	_, err2 := strconv.ParseUint(b, 10, 64)
	return ok && err1 == nil && err2 == nil
}

func dlqCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream, group string
	var ids letterIDs
	var all bool
	limit := 100
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "the stream (required)")
	fs.StringVar(&group, "group", "", "the group whose dead letters to handle (required)")
	fs.IntVar(&limit, "limit", 100, "list: print at most this many letters, oldest first")
	fs.Var(&ids, "id", "redrive, delete: the letter PARTITION/ID as list prints it (repeatable, or comma separated)")
	fs.BoolVar(&all, "all", false, "redrive, delete: every dead letter of the group")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "dlq "+inv.action, dlq(ctx, inv, conn, stream, group, limit, ids, all))
	}
}

func dlq(ctx context.Context, inv invocation, conn connFlags, stream, group string, limit int, ids letterIDs, all bool) error {
	if err := requireName("stream", "stream", stream); err != nil {
		return err
	}
	if err := requireName("group", "group", group); err != nil {
		return err
	}
	switch {
	case inv.action == "list" && (all || len(ids) > 0):
		return usagef("list takes no -id or -all (it lists up to -limit letters)")
	case inv.action == "list" && limit < 1:
		return usagef("-limit is %d, must be at least 1", limit)
	case inv.action != "list" && all == (len(ids) > 0):
		return usagef("%s needs the letters: -id PARTITION/ID (repeatable) or -all", inv.action)
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	switch inv.action {
	case "list":
		return dlqList(ctx, inv, conn, s, stream, group, limit)
	case "redrive":
		var n int
		if all {
			n, err = s.seg.RedriveAllDeadLetters(ctx, stream, group)
		} else {
			n, err = s.seg.RedriveDeadLetters(ctx, stream, group, ids...)
		}
		if perr := dlqReport(inv, conn, dlqCountJSON{Namespace: s.ns, Stream: stream, Group: group, Redriven: &n}); perr != nil {
			return perr
		}
		return sdkError(err)
	default: // delete
		letters := []segmenter.DeadLetter(ids)
		if all {
			if letters, err = allLetters(ctx, s.seg, stream, group); err != nil {
				return sdkError(err)
			}
		}
		n := 0
		if len(letters) > 0 {
			n, err = s.seg.DeleteDeadLetters(ctx, stream, group, letters...)
		}
		if perr := dlqReport(inv, conn, dlqCountJSON{Namespace: s.ns, Stream: stream, Group: group, Deleted: &n}); perr != nil {
			return perr
		}
		return sdkError(err)
	}
}

// allLetters lists every dead letter of the group, page by page.
func allLetters(ctx context.Context, seg *segmenter.Segmenter, stream, group string) ([]segmenter.DeadLetter, error) {
	var out []segmenter.DeadLetter
	var last segmenter.DeadLetter
	for {
		page, err := seg.DeadLetters(ctx, stream, group, dlqPage, segmenter.DeadLettersAfter(last))
		out = append(out, page...)
		if err != nil || len(page) < dlqPage {
			return out, err
		}
		last = page[len(page)-1]
	}
}

func dlqReport(inv invocation, conn connFlags, out dlqCountJSON) error {
	if conn.json {
		return writeJSON(inv.stdout, out)
	}
	var err error
	if out.Redriven != nil {
		_, err = fmt.Fprintf(inv.stdout, "re-drove %d dead letters of group %s to stream %s\n", *out.Redriven, out.Group, out.Stream)
	} else {
		_, err = fmt.Fprintf(inv.stdout, "deleted %d dead letters of group %s of stream %s\n", *out.Deleted, out.Group, out.Stream)
	}
	return err
}

func dlqList(ctx context.Context, inv invocation, conn connFlags, s *session, stream, group string, limit int) error {
	letters, err := s.seg.DeadLetters(ctx, stream, group, limit+1)
	if err != nil {
		return sdkError(err)
	}
	more := len(letters) > limit
	letters = letters[:min(len(letters), limit)]
	if conn.json {
		out := deadLettersJSON{Namespace: s.ns, Stream: stream, Group: group, DeadLetters: []deadLetterJSON{}, More: more}
		for _, l := range letters {
			j := deadLetterJSON{Partition: l.Partition, ID: l.ID, OriginalID: l.OriginalID, Key: l.Message.PartitionKey,
				Metadata: l.Message.Metadata, Reason: l.Reason, Deliveries: l.Deliveries, At: l.At.UTC(), Poison: l.Message.PoisonReason}
			if j.Metadata == nil {
				j.Metadata = map[string]string{}
			}
			if utf8.Valid(l.Message.Data) {
				d := string(l.Message.Data)
				j.Data = &d
			} else {
				j.DataBase64 = l.Message.Data
			}
			out.DeadLetters = append(out.DeadLetters, j)
		}
		return writeJSON(inv.stdout, out)
	}
	if len(letters) == 0 {
		_, err := fmt.Fprintf(inv.stdout, "no dead letters for group %s of stream %s\n", group, stream)
		return err
	}
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LETTER\tORIGINAL-ID\tKEY\tDELIVERIES\tAT\tREASON\tDATA")
	for _, l := range letters {
		key, data := printable(l.Message.PartitionKey), printable(string(l.Message.Data))
		if l.Message.PoisonReason != "" {
			key = "(poison)"
			var fields []string
			for _, name := range slices.Sorted(maps.Keys(l.Message.Metadata)) {
				fields = append(fields, name+"="+printable(l.Message.Metadata[name]))
			}
			data = strings.Join(fields, " ")
		}
		if len(data) > 60 {
			data = data[:57] + "..."
		}
		fmt.Fprintf(tw, "%d/%s\t%s\t%s\t%d\t%s\t%s\t%s\n", l.Partition, l.ID, l.OriginalID, key, l.Deliveries,
			l.At.UTC().Format(time.RFC3339), printable(l.Reason), data)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if more {
		_, err = fmt.Fprintf(inv.stdout, "(more than %d: raise -limit to see them)\n", limit)
	}
	return err
}
