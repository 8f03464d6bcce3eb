package segmenter

import (
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/rebalance"
)

// DecodeEntry decodes an entry of partition p of stream read without a
// consumer group (XRANGE, XREAD: a tool that looks at a partition) as a
// consumer would deliver it: fields are the entry's field/value pairs in
// their stream order. An entry this SDK did not write decodes as poison
// (Poison(msg) reports it, its raw fields in Metadata). A dead letter
// re-driven for one group decodes to its message, and redrivenFor names
// that group: the other groups skip it.
func DecodeEntry(stream string, p int, id string, fields []string) (msg *contracts.CMessage, redrivenFor string) {
	n := len(fields)
	switch {
	case n >= 2 && fields[0] == rebalance.FieldRedriveTo:
		redrivenFor, fields = fields[1], fields[2:]
	case n >= 4 && fields[0] == fieldVersion && fields[n-2] == rebalance.FieldTo:
		redrivenFor, fields = fields[n-1], fields[:n-2] // written by earlier versions
	}
	msg = &contracts.CMessage{Id: id, Partition: uint32(p), Stream: stream}
	decodeEntry(fields, msg)
	return msg, redrivenFor
}
