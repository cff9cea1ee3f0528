//! Reading archives: finding parts, checking them, reading blobs.
