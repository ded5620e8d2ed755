"""Synthetic microservice logs: the sequence generator, classification/instruction sets, the splitter."""
