"""The kinds of poison: what a poisoned dataset's ``attack_kind`` says and which metric measures it.

* ``availability`` — poisons on (most of) the training set so that the victim fails on clean test data;
  measured by the relative accuracy loss against a clean reference victim.
* ``backdoor`` — a trigger that makes the victim predict a target class; measured by the attack success rate.
* ``targeted`` — clean-label poisons aimed at chosen test images; measured by target success.
* ``none`` — clean data.
"""

AVAILABILITY, BACKDOOR, TARGETED, NONE = "availability", "backdoor", "targeted", "none"
