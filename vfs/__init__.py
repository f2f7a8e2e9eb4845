"""vfs: one FUSE mount over S3, GCS, NFS and Google Drive, read through a tiered block cache."""

__version__ = "0.1.0"
