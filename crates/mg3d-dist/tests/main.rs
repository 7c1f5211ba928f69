//! Real c10d across processes: the test binary starts copies of itself as the ranks.

mod collectives;
