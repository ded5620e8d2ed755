"""Shared pieces of LogTriage: settings, the sequence record, readers, normalization, windows, templates."""
