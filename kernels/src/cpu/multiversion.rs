//! `multiversion!`: compile a function body once per SIMD level and pick one at run time.
//!
//! The body is an `#[inline(always)]` inner function, so everything it inlines (loops,
//! `math::exp`, conversions) is vectorised with the wrapper's target features. Closures are
//! not covered: call multiversioned leaf functions from inside parallel tasks, not around them.

macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn imp_avx512($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                fn imp_avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                match $crate::cpu::isa::active() {
                    $crate::cpu::isa::Isa::Avx512 | $crate::cpu::isa::Isa::Avx512Bf16 => {
                        // SAFETY: `active()` only reports levels whose features the CPU has.
                        return unsafe { imp_avx512($($arg),*) };
                    }
                    $crate::cpu::isa::Isa::Avx2 => {
                        // SAFETY: as above.
                        return unsafe { imp_avx2($($arg),*) };
                    }
                    $crate::cpu::isa::Isa::Scalar => {}
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;
