//! The agent runtime (`triad agent -- <work command…>`).
