//! The wire types' integration tests, one binary.

mod proptest_validation;
