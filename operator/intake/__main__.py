from lectern_operator.intake.main import main

main()
