//! The terminal dashboard. Not built yet: `pgcat --tui` is refused with a
//! message until the dashboard issue lands.
