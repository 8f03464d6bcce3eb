.PHONY: proto
proto:
	bash contracts/gen.sh
