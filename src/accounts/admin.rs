//! Admin operations on accounts, shared by the CLI and the admin socket.
